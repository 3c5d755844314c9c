"""Reinforcement fine-tuning end to end through the SDK on the tiny model: create with a grader,
validate, train in a real child process (sampling, grading, policy updates), events, checkpoints,
the result file, the model by name, pause and resume to the same weights, cancel, bad files."""

from __future__ import annotations

import base64
import csv
import io
import json
import threading
import time
from pathlib import Path

import openai
import pytest
from safetensors.torch import load_file

from openft.settings import Settings
from openft.worker.loop import Worker

BASE = "tiny-llama"
# A reward with spread inside every group: how many distinct characters the answer uses.
VARIETY = {
    "type": "python",
    "name": "variety",
    "source": "def grade(sample, item):\n    return min(len(set(sample['output_text'])), 20) / 20\n",
}


def _prompts(n: int = 10) -> bytes:
    rows = [
        {
            "messages": [
                {"role": "developer", "content": "Answer with a number."},
                {"role": "user", "content": f"What is {i} plus {i}?"},
            ],
            "answer": str(2 * i),
        }
        for i in range(n)
    ]
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


@pytest.fixture
def settings(tmp_path, monkeypatch, tiny_model_dir) -> Settings:
    home = tmp_path / "openft-home"
    monkeypatch.setenv("OPENFT_HOME", str(home))
    return Settings(
        home=home,
        database_url=f"sqlite:///{home / 'openft.db'}",
        base_models={BASE: str(tiny_model_dir)},
        lease_seconds=30.0,
        heartbeat_seconds=1.0,
        poll_seconds=0.2,
    )


def _create(client, *, grader=VARIETY, n_epochs=1, batch_size=5, validation=False, **hyperparameters):
    training = client.files.create(file=("prompts.jsonl", _prompts()), purpose="fine-tune")
    extra = {}
    if validation:
        extra["validation_file"] = client.files.create(
            file=("valid.jsonl", _prompts(4)), purpose="fine-tune"
        ).id
    return client.fine_tuning.jobs.create(
        model=BASE,
        training_file=training.id,
        seed=7,
        suffix="rft",
        method={
            "type": "reinforcement",
            "reinforcement": {
                "grader": grader,
                "hyperparameters": {
                    "n_epochs": n_epochs,
                    "batch_size": batch_size,
                    "learning_rate_multiplier": 50,
                    "group_size": 2,
                    "max_completion_tokens": 6,
                    **hyperparameters,
                },
            },
        },
        **extra,
    )


def _events(client, job_id: str) -> list:
    return list(reversed(list(client.fine_tuning.jobs.list_events(job_id, limit=100))))


def _adapter(services, job) -> dict:
    _, artifact = services.models.resolve_for_inference(job.organization_id, job.fine_tuned_model)
    return load_file(Path(artifact) / "adapter" / "adapter_model.safetensors")


def _wait_for(predicate, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def _metrics_steps(client, job_id: str) -> list[int]:
    return [
        e.data["step"] for e in client.fine_tuning.jobs.list_events(job_id, limit=100) if e.type == "metrics"
    ]


def test_reinforcement_job_trains_and_reports_rewards_like_openai(client, services):
    job = _create(client, n_epochs=2, validation=True, eval_interval=2)
    assert job.status == "validating_files"
    assert job.method.type == "reinforcement"
    assert job.method.reinforcement.grader.name == "variety"

    assert Worker(services).run(burst=True) == 2
    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model.startswith(f"ft:{BASE}:personal:rft:")
    hp = job.method.reinforcement.hyperparameters
    assert (hp.n_epochs, hp.batch_size, hp.reasoning_effort) == (2, 5, "default")
    assert hp.compute_multiplier == 1.0 and hp.eval_interval == 2 and hp.eval_samples == 4
    assert job.trained_tokens > 0

    events = _events(client, job.id)
    metrics = [e for e in events if e.type == "metrics"]
    assert [e.data["step"] for e in metrics] == [1, 2, 3, 4]
    assert metrics[0].message.startswith("Step 1/4: training reward=")
    assert "validation reward=" in metrics[1].message and "validation reward=" not in metrics[0].message
    for event in metrics:
        data = event.data
        assert 0.0 <= data["train_reward_mean"] <= 1.0
        assert data["completion_length_mean"] > 0 and data["grader_error_rate"] == 0.0
        assert data["kl"] >= 0.0 and data["total_steps"] == 4
    assert metrics[1].data["valid_reward_mean"] >= 0.0
    assert metrics[0].data["kl"] == 0.0 < metrics[-1].data["kl"]  # the policy moved away from the reference
    assert any("Reinforcement fine-tuning with grader 'variety'" in e.message for e in events)

    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert [c.step_number for c in checkpoints] == [4, 2]
    assert checkpoints[0].fine_tuned_model_checkpoint == job.fine_tuned_model
    assert checkpoints[1].metrics.step == 2
    assert checkpoints[1].metrics.model_extra["train_reward_mean"] == metrics[1].data["train_reward_mean"]

    (result_id,) = job.result_files
    rows = list(
        csv.DictReader(io.StringIO(base64.b64decode(client.files.content(result_id).read()).decode()))
    )
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert list(rows[0])[:8] == [
        "step",
        "train_reward_mean",
        "valid_reward_mean",
        "train_reward_std",
        "train_loss",
        "kl",
        "completion_length_mean",
        "grader_error_rate",
    ]
    assert rows[0]["valid_reward_mean"] == "" and rows[1]["valid_reward_mean"] != ""
    assert float(rows[0]["train_reward_mean"]) == pytest.approx(
        metrics[0].data["train_reward_mean"], abs=1e-5
    )

    # LoRA B matrices start at zero: any non-zero entry is a weight the policy gradient changed.
    adapter = _adapter(services, job)
    moved = [name for name, tensor in adapter.items() if "lora_B" in name and tensor.abs().sum() > 0]
    assert moved, "no LoRA weight changed"
    reply = client.chat.completions.create(
        model=job.fine_tuned_model, messages=[{"role": "user", "content": "What is 1 plus 1?"}], max_tokens=4
    )
    assert reply.model == job.fine_tuned_model and reply.usage.completion_tokens <= 4


def test_a_multi_grader_reports_each_sub_reward_and_grader_failures_become_reward_zero(client, services):
    grader = {
        "type": "multi",
        "name": "mixed",
        "graders": {
            "variety": VARIETY,
            "broken": {
                "type": "python",
                "name": "broken",
                "source": "def grade(sample, item):\n    return 1 / 0\n",
            },
        },
        "calculate_output": "variety + broken",
    }
    job = _create(client, grader=grader, batch_size=10)
    Worker(services).run(burst=True)
    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    events = _events(client, job.id)
    (metric,) = [e for e in events if e.type == "metrics"]
    assert metric.data["train_reward_broken"] == 0.0 and metric.data["grader_error_rate"] == 1.0
    assert metric.data["train_reward_mean"] == pytest.approx(metric.data["train_reward_variety"])
    (warning,) = [e for e in events if "because the grader failed" in e.message]
    assert warning.level == "warn" and "ZeroDivisionError" in warning.message
    rows = list(
        csv.DictReader(
            io.StringIO(base64.b64decode(client.files.content(job.result_files[0]).read()).decode())
        )
    )
    assert {"train_reward_variety", "train_reward_broken"} <= set(rows[0])


def test_pause_then_resume_ends_with_the_uninterrupted_adapter(client, services):
    straight = _create(client, n_epochs=2)
    Worker(services).run(burst=True)
    straight = client.fine_tuning.jobs.retrieve(straight.id)
    assert straight.status == "succeeded", straight.error

    paused = _create(client, n_epochs=2)
    thread = threading.Thread(target=Worker(services).run, kwargs={"burst": True}, daemon=True)
    thread.start()
    _wait_for(lambda: _metrics_steps(client, paused.id))
    assert client.fine_tuning.jobs.pause(paused.id).status == "paused"
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert client.fine_tuning.jobs.resume(paused.id).status == "queued"
    Worker(services).run(burst=True)
    paused = client.fine_tuning.jobs.retrieve(paused.id)
    assert paused.status == "succeeded", paused.error
    assert any(e.message.startswith("Resuming from the checkpoint") for e in _events(client, paused.id))

    a, b = _adapter(services, straight), _adapter(services, paused)
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] == b[name]).all(), name  # same seed: same samples, rewards and updates


def test_cancel_stops_a_running_reinforcement_job(client, services):
    job = _create(client, n_epochs=20, batch_size=1)
    thread = threading.Thread(target=Worker(services).run, kwargs={"burst": True}, daemon=True)
    thread.start()
    _wait_for(lambda: _metrics_steps(client, job.id))
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    thread.join(timeout=60)
    assert not thread.is_alive()
    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "cancelled" and job.fine_tuned_model is None
    assert max(_metrics_steps(client, job.id)) < 200


def test_several_devices_are_refused_for_a_reinforcement_job_naming_the_parameter(client):
    with pytest.raises(openai.BadRequestError) as refused:
        _create(client, n_devices=2)
    assert refused.value.body["param"] == "method.reinforcement.hyperparameters.n_devices"
    assert "one device" in refused.value.body["message"]
    assert client.fine_tuning.jobs.list().data == []


def test_a_chat_file_is_not_an_rft_file(client, services):
    rows = [
        {"messages": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": "hello"}]}
        for i in range(10)
    ]
    training = client.files.create(
        file=("chat.jsonl", b"".join(json.dumps(r).encode() + b"\n" for r in rows)), purpose="fine-tune"
    )
    job = client.fine_tuning.jobs.create(
        model=BASE,
        training_file=training.id,
        method={"type": "reinforcement", "reinforcement": {"grader": VARIETY}},
    )
    Worker(services).run(burst=True)
    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "failed"
    assert job.error.code == "invalid_training_file" and job.error.param == "training_file"
    assert "Example 1, message 2: the last message is an assistant message" in job.error.message


def test_a_score_model_grader_asks_a_served_model_from_the_training_process(client, services):
    grader = {
        "type": "multi",
        "graders": {
            "variety": VARIETY,
            "judge": {
                "type": "score_model",
                "name": "judge",
                "model": BASE,
                "input": [{"role": "user", "content": "Score 0 to 1: {{sample.output_text}}"}],
                "sampling_params": {"temperature": 0, "max_completions_tokens": 3},
            },
        },
        "calculate_output": "variety + judge",
    }
    job = _create(client, grader=grader, batch_size=10)
    Worker(services).run(burst=True)
    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    events = _events(client, job.id)
    (metric,) = [e for e in events if e.type == "metrics"]
    assert 0.0 <= metric.data["train_reward_judge"] <= 1.0
    # the random tiny model may not write a number (a parse error), but it was reached and answered
    assert not [e.message for e in events if "model_grader_server_error" in e.message]

"""A job end to end through the official SDK: upload, create, validate, train in a real child
process on a tiny model, then events, checkpoints, the result file and the model by name."""

from __future__ import annotations

import base64
import csv
import io
import json
import signal
import threading
import time
from pathlib import Path

import openai
import pytest
from safetensors.torch import load_file

from openft.settings import Settings
from openft.worker.loop import Worker
from openft.worker.runner import SubprocessLauncher

BASE = "tiny-llama"


def _examples(n: int = 12) -> bytes:
    rows = []
    for i in range(n):
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": "You answer with the code word."},
                    {"role": "user", "content": f"What is the code word? (ask #{i})"},
                    {"role": "assistant", "content": "banana"},
                ]
            }
        )
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


@pytest.fixture
def settings(tmp_path, monkeypatch, tiny_model_dir) -> Settings:
    home = tmp_path / "openft-home"
    monkeypatch.setenv("OPENFT_HOME", str(home))
    return Settings(
        home=home,
        database_url=f"sqlite:///{home / 'openft.db'}",
        base_models={BASE: str(tiny_model_dir)},
        model_aliases={"gpt-4o-mini": BASE},
        lease_seconds=30.0,
        heartbeat_seconds=1.0,
        poll_seconds=0.2,
    )


def _create(client, *, n_epochs: int, batch_size: int, n: int = 12, **extra):
    training = client.files.create(file=("train.jsonl", _examples(n)), purpose="fine-tune")
    return client.fine_tuning.jobs.create(
        model=BASE,
        training_file=training.id,
        seed=1234,
        method={
            "type": "supervised",
            "supervised": {
                "hyperparameters": {
                    "n_epochs": n_epochs,
                    "batch_size": batch_size,
                    "learning_rate_multiplier": 5,
                }
            },
        },
        **extra,
    )


def _events(client, job_id: str) -> list:
    """All events, oldest first, walking the newest-first pages."""
    return list(reversed(list(client.fine_tuning.jobs.list_events(job_id, limit=7))))


def _wait_for(predicate, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def _adapter(services, job) -> dict:
    row = services.models.resolve_for_inference(job.organization_id, job.fine_tuned_model)
    path = Path(row[1]) / "adapter" / "adapter_model.safetensors"
    return load_file(path)


def test_job_trains_to_success_and_reports_like_openai(client, services):
    job = _create(client, n_epochs=3, batch_size=4, suffix="codeword")
    assert job.status == "validating_files"

    assert Worker(services).run(burst=True) == 2  # one claim to validate, one to train

    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    assert job.error.code is None
    assert job.fine_tuned_model.startswith(f"ft:{BASE}:personal:codeword:")
    assert job.hyperparameters.n_epochs == 3 and job.hyperparameters.batch_size == 4
    assert job.finished_at >= job.created_at
    stats_tokens = job.trained_tokens
    assert stats_tokens and stats_tokens % 3 == 0  # billable tokens x epochs

    messages = [e.message for e in _events(client, job.id)]
    assert messages[0] == f"Created fine-tuning job: {job.id}"
    assert messages[1] == f"Validating training file: {job.training_file}"
    assert messages[2] == "Files validated, moving job to queued state"
    assert messages[3] == "Fine-tuning job started"
    assert messages[-2] == f"New fine-tuned model created: {job.fine_tuned_model}"
    assert messages[-1] == "The job has successfully completed"
    metrics = [e for e in _events(client, job.id) if e.type == "metrics"]
    assert [e.data["step"] for e in metrics] == list(range(1, 10))
    assert all(e.data["total_steps"] == 9 for e in metrics)
    assert metrics[0].message.startswith("Step 1/9: training loss=")
    assert metrics[-1].data["train_loss"] < metrics[0].data["train_loss"]

    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert [c.step_number for c in checkpoints] == [9, 6, 3]
    assert checkpoints[0].fine_tuned_model_checkpoint == job.fine_tuned_model
    assert checkpoints[1].fine_tuned_model_checkpoint.endswith(":ckpt-step-6")
    assert checkpoints[1].metrics.train_loss is not None and checkpoints[1].metrics.step == 6

    (result_id,) = job.result_files
    result = client.files.retrieve(result_id)
    assert result.purpose == "fine-tune-results"
    rows = list(
        csv.DictReader(io.StringIO(base64.b64decode(client.files.content(result_id).read()).decode()))
    )
    assert [int(r["step"]) for r in rows] == list(range(1, 10))
    assert set(rows[0]) == {"step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"}

    names = {m.id for m in client.models.list()}
    assert job.fine_tuned_model in names
    assert checkpoints[1].fine_tuned_model_checkpoint in names

    # The model and a checkpoint answer by name in chat completions, then deletion makes them 404.
    question = [{"role": "user", "content": "What is the code word? (ask #0)"}]
    for name in (job.fine_tuned_model, checkpoints[1].fine_tuned_model_checkpoint, BASE):
        reply = client.chat.completions.create(model=name, messages=question, max_tokens=4, temperature=0)
        assert reply.model == name
        assert reply.usage.completion_tokens <= 4 and reply.usage.prompt_tokens > 0
        assert reply.choices[0].finish_reason in ("stop", "length")
    assert client.models.delete(job.fine_tuned_model).deleted is True
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model=job.fine_tuned_model, messages=question)
    assert missing.value.code == "model_not_found"


def test_bad_training_file_fails_validation_without_training(client, services):
    bad = b'{"messages": [{"role": "user", "content": "hi"}]}\n' * 12
    training = client.files.create(file=("bad.jsonl", bad), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=training.id)
    assert job.model == BASE  # the alias lands on the configured open model

    Worker(services).run(burst=True)

    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "failed"
    assert job.error.code == "invalid_training_file"
    assert job.error.param == "training_file"
    assert "Example 1" in job.error.message or "line 1" in job.error.message.lower()
    assert job.fine_tuned_model is None and job.result_files == []


def _run_in_thread(worker: Worker) -> threading.Thread:
    thread = threading.Thread(target=worker.run, kwargs={"burst": True}, daemon=True)
    thread.start()
    return thread


def _metrics_steps(client, job_id: str) -> list[int]:
    return [
        e.data["step"] for e in client.fine_tuning.jobs.list_events(job_id, limit=100) if e.type == "metrics"
    ]


def test_cancel_stops_a_running_job_at_the_next_step(client, services):
    job = _create(client, n_epochs=25, batch_size=1)
    thread = _run_in_thread(Worker(services))
    _wait_for(lambda: _metrics_steps(client, job.id))

    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    thread.join(timeout=30)
    assert not thread.is_alive(), "the worker did not stop the child"

    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "cancelled" and job.fine_tuned_model is None
    assert max(_metrics_steps(client, job.id)) < 300
    with pytest.raises(Exception) as excinfo:
        client.fine_tuning.jobs.cancel(job.id)
    assert getattr(excinfo.value, "status_code", None) == 400


def test_pause_then_resume_ends_with_the_uninterrupted_adapter(client, services):
    straight = _create(client, n_epochs=2, batch_size=2)
    Worker(services).run(burst=True)
    straight = client.fine_tuning.jobs.retrieve(straight.id)
    assert straight.status == "succeeded", straight.error

    paused = _create(client, n_epochs=2, batch_size=2)
    thread = _run_in_thread(Worker(services))
    _wait_for(lambda: len(_metrics_steps(client, paused.id)) >= 2)
    assert client.fine_tuning.jobs.pause(paused.id).status == "paused"
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert client.fine_tuning.jobs.retrieve(paused.id).status == "paused"

    assert client.fine_tuning.jobs.resume(paused.id).status == "queued"
    Worker(services).run(burst=True)
    paused = client.fine_tuning.jobs.retrieve(paused.id)
    assert paused.status == "succeeded", paused.error

    a, b = _adapter(services, straight), _adapter(services, paused)
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] == b[name]).all(), name
    steps = _metrics_steps(client, paused.id)
    assert sorted(set(steps)) == list(range(1, 13)) and len(steps) == len(set(steps))  # no duplicate events


class _Interposed:
    """The child's stdout as the worker reads it, calling ``hook(line)`` before each line is handed
    over: lets a test act (pause, resume, cancel through the API) at an exact point of the run."""

    def __init__(self, stream, hook) -> None:
        self.stream = stream
        self.hook = hook

    def __iter__(self):
        for raw in self.stream:
            self.hook(json.loads(raw))
            yield raw


class _InterposingLauncher(SubprocessLauncher):
    def __init__(self, hook) -> None:
        self.hook = hook
        self.proc = None

    def start(self, spec_path, log_path):
        self.proc = super().start(spec_path, log_path)
        self.proc.stdout = _Interposed(self.proc.stdout, self.hook)
        return self.proc


def _pending_signals(pid: int) -> int:
    """The process-wide pending-signal mask of ``pid`` (``ShdPnd`` in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("ShdPnd:"):
            return int(line.split()[1], 16)
    return 0


def _job_row(services, job_id: str):
    from openft.store import jobs as store

    with services.db.transaction() as session:
        row = store.get_job(session, job_id)
        session.expunge(row)
        return row


def test_pause_then_resume_before_the_child_stops_continues_from_its_checkpoint(client, services):
    straight = _create(client, n_epochs=2, batch_size=1)
    Worker(services).run(burst=True)
    straight = client.fine_tuning.jobs.retrieve(straight.id)
    assert straight.status == "succeeded", straight.error

    job = _create(client, n_epochs=2, batch_size=1)
    Worker(services).run(burst=True, max_jobs=1)  # validation only
    assert client.fine_tuning.jobs.retrieve(job.id).status == "queued"

    def hook(line) -> None:
        if line["type"] != "metrics" or line["step"] != 1:
            return
        # Hold the child still, pause and resume at once: the job is queued again while this
        # worker still holds its lease and the child has not stopped.
        launcher.proc.send_signal(signal.SIGSTOP)
        client.fine_tuning.jobs.pause(job.id)
        assert client.fine_tuning.jobs.resume(job.id).status == "queued"
        # The worker notices (status polling) and asks the child to pause: SIGUSR1 waits, pending.
        _wait_for(lambda: _pending_signals(launcher.proc.pid) & (1 << (signal.SIGUSR1 - 1)), timeout=30)
        launcher.proc.send_signal(signal.SIGCONT)

    launcher = _InterposingLauncher(hook)
    Worker(services, launcher=launcher).run(burst=True, max_jobs=1)
    row = _job_row(services, job.id)
    assert row.status == "queued" and row.lease_owner is None
    assert row.attempts == 0  # a stop that was asked for is not a failed attempt

    Worker(services).run(burst=True)
    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    assert _job_row(services, job.id).attempts == 1
    resumed = [
        e.message for e in _events(client, job.id) if e.message.startswith("Resuming from the checkpoint")
    ]
    (message,) = resumed
    assert 0 < int(message.rsplit(" ", 1)[1]) < 24  # continued mid-run, not from step 0
    a, b = _adapter(services, straight), _adapter(services, job)
    for name in a:
        assert (a[name] == b[name]).all(), name
    steps = _metrics_steps(client, job.id)
    assert sorted(steps) == list(range(1, 25))


def test_a_pause_that_arrives_as_the_last_step_ends_keeps_the_result(client, services):
    straight = _create(client, n_epochs=1, batch_size=4)
    Worker(services).run(burst=True)
    straight = client.fine_tuning.jobs.retrieve(straight.id)
    assert straight.status == "succeeded", straight.error

    job = _create(client, n_epochs=1, batch_size=4)

    def hook(line) -> None:
        if line["type"] == "result":  # training is done; the pause comes too late for the child
            assert client.fine_tuning.jobs.pause(job.id).status == "paused"

    Worker(services, launcher=_InterposingLauncher(hook)).run(burst=True)
    row = _job_row(services, job.id)
    assert row.status == "paused" and row.lease_owner is None and row.attempts == 0

    client.fine_tuning.jobs.resume(job.id)
    Worker(services).run(burst=True)
    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    a, b = _adapter(services, straight), _adapter(services, job)
    for name in a:
        assert (a[name] == b[name]).all(), name


def test_nothing_is_recorded_after_a_job_is_cancelled(client, services):
    job = _create(client, n_epochs=1, batch_size=4)

    def hook(line) -> None:
        if line["type"] == "message" and client.fine_tuning.jobs.retrieve(job.id).status == "running":
            client.fine_tuning.jobs.cancel(job.id)  # the child's first line is still to be recorded

    Worker(services, launcher=_InterposingLauncher(hook)).run(burst=True)
    events = _events(client, job.id)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    assert events[-1].message == "Fine-tuning job cancelled"
    assert all(isinstance(e.data, dict) for e in events)  # data is an object, never null


class _KillingLauncher(SubprocessLauncher):
    """Starts the real child, then SIGKILLs it: a training process that dies under the worker."""

    def start(self, spec_path, log_path):
        proc = super().start(spec_path, log_path)
        proc.send_signal(signal.SIGKILL)
        return proc


def test_a_child_that_keeps_dying_fails_after_the_attempts_limit(client, services):
    job = _create(client, n_epochs=1, batch_size=4)
    worker = Worker(services, launcher=_KillingLauncher())
    worker.run(burst=True)

    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "failed"
    assert job.error.code == "worker_lost"
    assert str(services.settings.max_attempts) in job.error.message
    requeues = [e.message for e in _events(client, job.id) if "training process died" in e.message]
    assert len(requeues) == services.settings.max_attempts


def test_export_writes_an_adapter_and_merged_weights_that_transformers_loads(
    client, services, settings, tmp_path, monkeypatch
):
    import torch
    from click.testing import CliRunner
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from openft.cli.main import main

    job = _create(client, n_epochs=1, batch_size=4)
    Worker(services).run(burst=True)
    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error

    monkeypatch.setenv("OPENFT_BASE_MODELS", json.dumps(settings.base_models))
    runner = CliRunner()
    for fmt in ("adapter", "merged"):
        result = runner.invoke(main, ["export", job.fine_tuned_model, str(tmp_path / fmt), "--format", fmt])
        assert result.exit_code == 0, result.output

    adapter_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(adapter_config["base_model_name_or_path"])
    with_adapter = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert tokenizer.chat_template  # the template travels with the weights
    ids = tokenizer("What is the code word?", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, with_adapter(ids).logits, atol=1e-4, rtol=1e-4)

"""Jobs and the devices that train them, through the official SDK: QLoRA refused where no worker has
CUDA, gradient_checkpointing resolved by the memory plan, a job that cannot fit failing fast with
``out_of_memory``, and a child that reports an error but does not exit killed rather than waited on."""

from __future__ import annotations

import json
import subprocess
import sys

import openai
import pytest

from openft.settings import Settings
from openft.worker import runner
from openft.worker.loop import Worker
from openft.worker.runner import SubprocessLauncher

BASE = "tiny-llama"
ROWS = [
    {
        "messages": [
            {"role": "user", "content": f"What is the code word? ({i})"},
            {"role": "assistant", "content": "banana"},
        ]
    }
    for i in range(10)
]


def _settings(tmp_path, monkeypatch, tiny_model_dir, **overrides) -> Settings:
    home = tmp_path / "openft-home"
    monkeypatch.setenv("OPENFT_HOME", str(home))
    return Settings(
        home=home,
        database_url=f"sqlite:///{home / 'openft.db'}",
        base_models={BASE: str(tiny_model_dir)},
        lease_seconds=30.0,
        heartbeat_seconds=1.0,
        poll_seconds=0.2,
        **overrides,
    )


@pytest.fixture
def settings(tmp_path, monkeypatch, tiny_model_dir, request) -> Settings:
    return _settings(tmp_path, monkeypatch, tiny_model_dir, **getattr(request, "param", {}))


def _create(client, **hyperparameters):
    training = client.files.create(
        file=("train.jsonl", "".join(json.dumps(r) + "\n" for r in ROWS).encode()), purpose="fine-tune"
    )
    return client.fine_tuning.jobs.create(
        model=BASE,
        training_file=training.id,
        method={"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
    )


@pytest.mark.parametrize("settings", [{"cuda_available": False}], indirect=True)
def test_qlora_without_cuda_is_refused_at_create_naming_the_parameter(client, http):
    with pytest.raises(openai.BadRequestError) as refused:
        _create(client, fine_tuning_type="qlora")
    error = refused.value.body
    assert refused.value.status_code == 400
    assert error["param"] == "method.supervised.hyperparameters.fine_tuning_type"
    assert "needs a CUDA GPU" in error["message"] and "'lora'" in error["message"]
    training = client.files.create(
        file=("t.jsonl", b'{"prompt": "a", "completion": "b"}\n'), purpose="fine-tune"
    )
    legacy = http.post(
        "/v1/fine_tuning/jobs",
        json={"model": BASE, "training_file": training.id, "hyperparameters": {"fine_tuning_type": "qlora"}},
    )
    assert legacy.status_code == 400 and legacy.json()["error"]["param"] == "hyperparameters.fine_tuning_type"
    assert client.fine_tuning.jobs.list().data == []  # nothing was stored


@pytest.mark.parametrize("settings", [{"cuda_available": True}], indirect=True)
def test_qlora_is_accepted_and_echoed_where_workers_have_cuda(client):
    job = _create(client, fine_tuning_type="qlora", gradient_checkpointing=True)
    hp = job.method.supervised.hyperparameters
    assert (hp.model_extra["fine_tuning_type"], hp.model_extra["gradient_checkpointing"]) == ("qlora", True)


def test_qlora_is_accepted_once_a_live_worker_reports_a_gpu(client, services, monkeypatch):
    from openft.services.workers import CUDA, Device, WorkerInfo

    monkeypatch.setattr("openft.services.accelerators.cuda_devices", lambda: [])  # no GPU on this host
    with pytest.raises(openai.BadRequestError):
        _create(client, fine_tuning_type="qlora")
    gpu = Device(CUDA, "NVIDIA H200", 0, 141 << 30)
    services.workers.register(WorkerInfo("gpu-worker", "gpu-host", 1, (gpu,), slots=1))
    job = _create(client, fine_tuning_type="qlora")
    assert job.method.supervised.hyperparameters.model_extra["fine_tuning_type"] == "qlora"


def test_bad_gradient_checkpointing_answers_400(client):
    with pytest.raises(openai.BadRequestError) as refused:
        _create(client, gradient_checkpointing="sometimes")
    assert refused.value.body["param"] == "method.supervised.hyperparameters.gradient_checkpointing"


def test_gradient_checkpointing_is_resolved_by_the_plan_and_echoed(client, services):
    job = _create(client, n_epochs=1)
    assert job.method.supervised.hyperparameters.model_extra["gradient_checkpointing"] == "auto"
    Worker(services).run(burst=True, max_jobs=1)  # validation only
    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "queued", job.error
    assert job.method.supervised.hyperparameters.model_extra["gradient_checkpointing"] is False


@pytest.mark.parametrize("settings", [{"device_memory_gib": 1.75}], indirect=True)
def test_a_job_that_cannot_fit_fails_at_validation_with_out_of_memory(client, services):
    job = _create(client, max_seq_length=200_000)
    assert Worker(services).run(burst=True) == 1  # validated and failed: never claimed for training
    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "failed" and job.error.code == "out_of_memory"
    message = job.error.message
    assert message.startswith(
        f"{BASE} does not fit in memory: fine_tuning_type=lora with max_seq_length=200000"
    )
    assert "1.75 GiB (CPU RAM, set by OPENFT_DEVICE_MEMORY_GIB)" in message
    assert "What would fit: max_seq_length <= " in message
    assert not (services.settings.models_dir / "jobs" / job.id).exists()


class _StuckAfterErrorLauncher(SubprocessLauncher):
    """A child that reports a CUDA out-of-memory error, then never exits (a hung CUDA teardown)."""

    def start(self, spec_path, log_path):
        line = json.dumps({"type": "error", "code": "out_of_memory", "message": "CUDA out of memory (test)"})
        script = f"import sys, time; print({line!r}, flush=True); time.sleep(600)"
        return subprocess.Popen(
            [sys.executable, "-c", script], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
        )


def test_a_child_stuck_after_reporting_out_of_memory_is_killed_and_the_job_fails(
    client, services, monkeypatch
):
    monkeypatch.setattr(runner, "ERROR_EXIT_GRACE_SECONDS", 0.5)
    launcher = _StuckAfterErrorLauncher()
    job = _create(client, n_epochs=1)
    Worker(services, launcher=launcher).run(burst=True)
    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "failed"
    assert (job.error.code, job.error.message) == ("out_of_memory", "CUDA out of memory (test)")

"""Validation has a lane of its own: while a real child trains one job on the tiny model, another
job's bad file fails, on SQLite and PostgreSQL. The worker also shows itself in the registry."""

from __future__ import annotations

import json
import threading
import time

import pytest

from openft.settings import Settings
from openft.worker.loop import Worker
from openft.worker.runner import SubprocessLauncher

BASE = "tiny-llama"


def _examples(n: int = 12) -> bytes:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"What is the code word? (ask #{i})"},
                {"role": "assistant", "content": "banana"},
            ]
        }
        for i in range(n)
    ]
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


@pytest.fixture
def settings(tmp_path, monkeypatch, tiny_model_dir, database_url) -> Settings:
    home = tmp_path / "openft-home"
    monkeypatch.setenv("OPENFT_HOME", str(home))
    return Settings(
        home=home,
        database_url=database_url,
        base_models={BASE: str(tiny_model_dir)},
        lease_seconds=30.0,
        heartbeat_seconds=1.0,
        poll_seconds=0.2,
    )


def _wait_for(predicate, timeout: float = 120.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached within {timeout}s")


class _HoldingLauncher(SubprocessLauncher):
    """The real child; the worker reads its first metrics line only once ``release`` is set, so the
    job is certainly still running (leased, heartbeating, its child alive) until the test says."""

    def __init__(self) -> None:
        self.training = threading.Event()
        self.release = threading.Event()
        self.proc = None

    def start(self, spec_path, log_path, **devices):
        self.proc = super().start(spec_path, log_path, **devices)
        self.proc.stdout = self._held(self.proc.stdout)
        return self.proc

    def _held(self, stream):
        for raw in stream:
            if json.loads(raw)["type"] == "metrics" and not self.training.is_set():
                self.training.set()
                assert self.release.wait(timeout=300), "the test never released the run"
            yield raw


def test_a_bad_file_fails_while_another_job_is_training(client, services):
    training = client.files.create(file=("train.jsonl", _examples()), purpose="fine-tune")
    first = client.fine_tuning.jobs.create(
        model=BASE,
        training_file=training.id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}},
    )
    launcher = _HoldingLauncher()
    worker = Worker(services, launcher=launcher)  # as `openft worker` runs it: the lane in its own thread
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        assert launcher.training.wait(timeout=180), "the first job never reached its first step"
        first = client.fine_tuning.jobs.retrieve(first.id)
        assert first.status == "running"
        assert first.method.supervised.hyperparameters.model_dump()["n_devices"] == 1  # auto, echoed resolved

        bad = b'{"messages": [{"role": "user", "content": "no answer"}]}\n' * 12
        bad_file = client.files.create(file=("bad.jsonl", bad), purpose="fine-tune")
        second = client.fine_tuning.jobs.create(model=BASE, training_file=bad_file.id)
        second = _wait_for(
            lambda: (job := client.fine_tuning.jobs.retrieve(second.id)).status == "failed" and job,
            what="the bad file to fail",
        )
        assert second.error.code == "invalid_training_file" and second.error.param == "training_file"
        # ...while the first job was still training, its child alive: validation waited for nothing.
        assert client.fine_tuning.jobs.retrieve(first.id).status == "running"
        assert launcher.proc.poll() is None

        (me,) = _wait_for(
            lambda: (live := services.workers.live()) and live[0].running and live,
            what="the registry to show the running job",
        )
        assert me.id == worker.worker_id and me.slots == 1 and me.devices[0].kind == "cpu"
        assert [r.job_id for r in me.running] == [first.id]
    finally:
        launcher.release.set()
    _wait_for(lambda: client.fine_tuning.jobs.retrieve(first.id).status == "succeeded", what="the first job")
    worker.drain.set()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert services.workers.live() == []  # a worker that stops removes itself

"""A worker that owns two (fake) GPUs, through the SDK on SQLite and PostgreSQL: two 1-device jobs
run at once, a third waits for a free GPU, a 2-device job waits until both are free, and each
child sees only its own CUDA_VISIBLE_DEVICES.

The inventory is a seam (``FixedInventory``), and so is the child: the real launcher (environment,
``PR_SET_PDEATHSIG``) starts a stand-in that trains nothing; it reports its start and stops when
the job is cancelled, so no job here claims to have trained. The real child runs on these paths in
``tests/durability/test_gpu_worker.py``.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pytest

from openft.services.job_runtime import JobRuntime
from openft.settings import Settings
from openft.worker.gpus import FixedInventory, Gpu
from openft.worker.loop import Worker
from openft.worker.runner import SubprocessLauncher

BASE = "tiny-llama"
TRAIN = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n' * 10

STAND_IN = """
import json, pathlib, signal, sys, time
def say(line):
    print(json.dumps(line), flush=True)
def stop(kind):
    say({"type": "cancelled", "step": 0} if kind == "cancel" else {"type": "paused", "step": 0, "path": ""})
    sys.exit(0)
signal.signal(signal.SIGTERM, lambda *_: stop("cancel"))
signal.signal(signal.SIGUSR1, lambda *_: stop("pause"))
pathlib.Path(sys.argv[1]).with_name("stand-in-ready").touch()  # from here on a signal is handled
say({"type": "started", "total_steps": 1, "resumed_from_step": 0})
while True:
    time.sleep(60)
"""


class StandInLauncher(SubprocessLauncher):
    def __init__(self) -> None:
        self.children: dict[str, object] = {}
        self.ready: dict[str, Path] = {}

    def command(self, spec_path):
        _argv, env = super().command(spec_path)
        return [sys.executable, "-c", STAND_IN, str(spec_path)], env

    def start(self, spec_path, log_path, **devices):
        proc = super().start(spec_path, log_path, **devices)
        job_id = json.loads(Path(spec_path).read_text())["job_id"]
        self.ready[job_id] = Path(spec_path).with_name("stand-in-ready")
        self.children[job_id] = proc
        return proc

    def started(self, job_id: str) -> bool:
        """The job's child runs and handles signals (a cancel is not lost to Python's start-up)."""
        return job_id in self.children and self.ready[job_id].exists()

    def environment(self, job_id: str) -> dict[str, str]:
        """What the child's process really got (``/proc/PID/environ``)."""
        raw = Path(f"/proc/{self.children[job_id].pid}/environ").read_bytes()
        return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


class RecordingRuntime(JobRuntime):
    """The real runtime; remembers each training claim's free GPUs and whom it got."""

    def __init__(self, services) -> None:
        super().__init__(services)
        self.training_claims: list[tuple[int | None, str | None]] = []

    def claim_training(self, worker_id, lease_seconds, **fits):
        claim = super().claim_training(worker_id, lease_seconds, **fits)
        self.training_claims.append((fits.get("free_devices"), claim.job_id if claim else None))
        return claim


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
        poll_seconds=0.1,
    )


def _wait_for(predicate, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached within {timeout}s")


def test_jobs_share_the_gpus_of_one_worker_each_on_its_own(client, services):
    def create(n_devices: int):
        return client.fine_tuning.jobs.create(
            model=BASE,
            training_file=file.id,
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_devices": n_devices}}},
        ).id

    def status(job_id: str) -> str:
        return client.fine_tuning.jobs.retrieve(job_id).status

    file = client.files.create(file=("train.jsonl", TRAIN), purpose="fine-tune")
    one, two, three, wide = create(1), create(1), create(1), create(2)
    runtime = services.runtime = RecordingRuntime(services)
    launcher = StandInLauncher()
    gpus = [Gpu(0, "Fake GPU", 80 * 1024**3), Gpu(1, "Fake GPU", 80 * 1024**3)]
    worker = Worker(services, launcher=launcher, inventory=FixedInventory(gpus))
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        _wait_for(lambda: launcher.started(one) and launcher.started(two), what="two jobs to start")
        assert (status(one), status(two)) == ("running", "running")
        assert launcher.environment(one)["CUDA_VISIBLE_DEVICES"] == "0"
        assert launcher.environment(two)["CUDA_VISIBLE_DEVICES"] == "1"
        assert launcher.environment(one)["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
        # Both GPUs are held: the third job and the 2-device one wait in the queue.
        _wait_for(lambda: status(wide) == "queued", what="validation of the last job")
        assert (status(three), status(wide)) == ("queued", "queued")
        capacity = _wait_for(
            lambda: (c := services.workers.capacity()).running_jobs == 2 and c, what="the registry"
        )
        assert (capacity.workers, capacity.gpus, capacity.free_gpus, capacity.can_run_cuda) == (1, 2, 0, True)
        assert (
            client.fine_tuning.jobs.retrieve(wide).method.supervised.hyperparameters.model_dump()["n_devices"]
            == 2
        )

        client.fine_tuning.jobs.cancel(one)  # GPU 0 comes free: the third job, next in line, takes it
        _wait_for(lambda: launcher.started(three), what="the third job to start")
        assert launcher.environment(three)["CUDA_VISIBLE_DEVICES"] == "0"
        assert launcher.children[one].wait(timeout=30) == 0

        client.fine_tuning.jobs.cancel(two)  # GPU 1 comes free, but the 2-device job needs both
        launcher.children[two].wait(timeout=30)
        tried = len(runtime.training_claims)
        _wait_for(
            lambda: [c for c in runtime.training_claims[tried:] if c == (1, None)][1:],
            what="the worker to try twice with one GPU free",
        )
        assert status(wide) == "queued" and wide not in launcher.children

        client.fine_tuning.jobs.cancel(three)
        _wait_for(lambda: launcher.started(wide), what="the 2-device job to start")
        assert launcher.environment(wide)["CUDA_VISIBLE_DEVICES"] == "0,1"
        assert status(wide) == "running"
        client.fine_tuning.jobs.cancel(wide)
        assert launcher.children[wide].wait(timeout=30) == 0
        assert [s for s, _job in runtime.training_claims if _job] == [2, 1, 1, 2]  # free GPUs at each claim
    finally:
        worker.drain.set()
        thread.join(timeout=60)
    assert not thread.is_alive()
    assert {status(j) for j in (one, two, three, wide)} == {"cancelled"}

"""A real ``openft worker`` that owns two GPUs (a stand-in ``nvidia-smi`` on its PATH; the training
children run on the CPU of this machine): it trains two jobs at once, each child with its own
``CUDA_VISIBLE_DEVICES``; SIGKILLed, it takes both children down and both jobs come back to the
queue. (That a requeued job resumes to its uninterrupted twin is test_worker_processes.py's.)"""

from __future__ import annotations

import os
import signal
import stat

import pytest
from fleet import alive, training_children, wait_for
from ledger import create_job, messages, metrics_steps

pytestmark = pytest.mark.postgres

NVIDIA_SMI = """#!/bin/sh
echo '0, GPU-00000000-0000-0000-0000-000000000000, Stand-in GPU, 81559'
echo '1, GPU-11111111-1111-1111-1111-111111111111, Stand-in GPU, 81559'
"""


def _environ(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as raw:
        return dict(item.split("=", 1) for item in raw.read().decode().split("\0") if "=" in item)


def test_a_killed_gpu_worker_loses_none_of_its_jobs(client, services, start_worker, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(NVIDIA_SMI)
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    # long enough that neither ends before the kill
    jobs = [create_job(client, n=12, n_epochs=20, seed=seed).id for seed in (23, 29)]

    worker = start_worker(env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    for job_id in jobs:
        wait_for(lambda j=job_id: metrics_steps(services, j), timeout=180, what=f"a step of {job_id}")
    children = wait_for(
        lambda: len(c := training_children(worker.pid)) == 2 and c, what="two training children at once"
    )
    assert sorted(_environ(pid)["CUDA_VISIBLE_DEVICES"] for pid in children) == ["0", "1"]
    (me,) = wait_for(
        lambda: (live := services.workers.live()) and len(live[0].running) == 2 and live,
        what="the registry to list both jobs",
    )
    assert [d.index for d in me.gpus] == [0, 1] and me.free_gpus == ()
    assert sorted(r.job_id for r in me.running) == sorted(jobs)

    worker.signal(signal.SIGKILL)
    for pid in children:
        wait_for(lambda p=pid: not alive(p), timeout=10, what="the orphaned children to die")
    expired: list[str] = []  # each job had its own lease, renewed at its own moment
    wait_for(
        lambda: expired.extend(services.runtime.expire_leases(3)) or len(expired) == 2,
        timeout=15,
        what="both leases to expire",
    )
    assert sorted(expired) == sorted(jobs)
    for job_id in jobs:
        assert client.fine_tuning.jobs.retrieve(job_id).status == "queued"
        assert any("was lost (attempt 1 of 3)" in m for m in messages(services, job_id))
    assert services.workers.live() == []  # not seen for a lease: gone

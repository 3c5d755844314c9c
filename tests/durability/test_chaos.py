"""The chaos test: several jobs, two worker processes on PostgreSQL, a seeded killer that SIGKILLs
workers and training children every few steps, and an API killed and restarted in the middle.

Afterwards every job has succeeded exactly once, with the adapter of its uninterrupted twin, one
metrics event per step, events complete and in order, and no orphan files or processes.
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest
from fleet import ApiProcess, WorkerProcess, alive, wait_for
from ledger import (
    ADAPTER_FILE,
    assert_events_complete_and_ordered,
    assert_same_adapter,
    create_job,
    job_dir,
    leftovers,
    load_adapter,
    twin_adapter,
)
from sqlalchemy import func, select

from openft.services.context import Services
from openft.store.tables import JobEventRow, JobRow, ModelRow

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

SEED = 20240611
KILLS = 6
JOBS = (("banana", 101), ("cherry", 202), ("mango", 303))
N_EXAMPLES, N_EPOCHS = 10, 2
TOTAL_STEPS = N_EXAMPLES * N_EPOCHS  # batch_size 1
BUDGET_SECONDS = 240


def _statuses(services: Services, job_ids: list[str]) -> dict[str, str]:
    with services.db.transaction() as session:
        return dict(session.execute(select(JobRow.id, JobRow.status).where(JobRow.id.in_(job_ids))).all())


def _steps_recorded(services: Services) -> int:
    with services.db.transaction() as session:
        return session.scalar(
            select(func.count()).select_from(JobEventRow).where(JobEventRow.type == "metrics")
        )


def test_jobs_survive_killed_workers_killed_children_and_an_api_restart(settings, tmp_path, start_worker):
    settings = settings.with_(max_attempts=50)
    api = ApiProcess(settings, tmp_path / "api.sock", tmp_path / "api.log")
    api.start()  # migrates the schema before any worker starts
    client = api.client()
    job_ids = [create_job(client, n=N_EXAMPLES, n_epochs=N_EPOCHS, seed=s, word=w).id for w, s in JOBS]
    observer = Services.build(settings)
    rng = random.Random(SEED)
    workers: list[WorkerProcess] = [start_worker(settings=settings) for _ in range(2)]
    retired: list[WorkerProcess] = []
    kills: list[str] = []
    next_kill_at = rng.randint(2, 5)
    deadline = time.monotonic() + BUDGET_SECONDS

    def all_finished() -> bool:
        return all(s in ("succeeded", "failed", "cancelled") for s in _statuses(observer, job_ids).values())

    while not all_finished():
        assert time.monotonic() < deadline, f"jobs unfinished after {BUDGET_SECONDS}s; kills so far: {kills}"
        busy = [w for w in workers if w.child() is not None]
        if len(kills) < KILLS and _steps_recorded(observer) >= next_kill_at and busy:
            victim = rng.choice(busy)
            child = victim.child()
            if child is not None and rng.random() < 0.5:
                victim_pid = child
                kills.append(f"child {child}")
                # The worker sees its child die, requeues the job as a failed attempt, claims again.
                os.kill(child, signal.SIGKILL)
            else:
                victim_pid = victim.pid
                kills.append(f"worker {victim.pid}")
                victim.signal(signal.SIGKILL)
                workers.remove(victim)
                retired.append(victim)
                workers.append(start_worker(settings=settings))
            wait_for(lambda p=victim_pid: not alive(p), timeout=10, what="the killed process to be gone")
            next_kill_at = _steps_recorded(observer) + rng.randint(3, 6)
            if len(kills) == KILLS // 2:
                api.kill()
                api.start()
                client = api.client()
        time.sleep(0.1)  # polling cadence of the killer, not synchronisation

    assert len(kills) == KILLS, f"the run ended before all kills happened: {kills}"
    for worker in workers:
        worker.signal(signal.SIGTERM)
        assert worker.proc.wait(timeout=60) == 0, worker.log()
    orphans = [pid for w in workers + retired for pid in w.seen_children if alive(pid)]
    assert orphans == [], "training children outlived their workers"

    for job_id in job_ids:
        job = client.fine_tuning.jobs.retrieve(job_id)  # through the restarted API
        assert job.status == "succeeded", (job_id, job.error)
        assert_events_complete_and_ordered(observer, job_id, TOTAL_STEPS)
        api_steps = [
            e.data["step"]
            for e in client.fine_tuning.jobs.list_events(job_id, limit=100)
            if e.type == "metrics"
        ]
        assert sorted(api_steps) == list(range(1, TOTAL_STEPS + 1))
        with observer.db.transaction() as session:
            models = session.scalars(
                select(ModelRow.id).where(ModelRow.job_id == job_id, ModelRow.kind == "fine_tune")
            )
            assert list(models) == [job.fine_tuned_model]
        out = job_dir(observer, job_id)
        assert_same_adapter(load_adapter(out / ADAPTER_FILE), twin_adapter(out, tmp_path))
    assert leftovers(observer) == []
    observer.close()
    api.kill()

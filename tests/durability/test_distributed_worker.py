"""A real ``openft worker`` training a job on two gloo ranks (torchrun) on PostgreSQL: SIGTERM drains
every rank at one step boundary with a checkpoint that another worker resumes; SIGKILL takes
torchrun's agent and both ranks down with the worker, and the job comes back to the queue.

(That an interrupted two-rank job ends bit for bit like an uninterrupted one is
tests/api/test_distributed_jobs.py's.)"""

from __future__ import annotations

import signal

import pytest
from fleet import alive, children, training_children, wait_for
from ledger import BASE, complete_checkpoints, examples, messages, metrics_steps, resumed_from

pytestmark = pytest.mark.postgres


def _create_two_rank_job(client, seed: int):
    training = client.files.create(file=("train.jsonl", examples(24)), purpose="fine-tune")
    hyperparameters = {"n_epochs": 3, "batch_size": 2, "learning_rate_multiplier": 5, "n_devices": 2}
    return client.fine_tuning.jobs.create(
        model=BASE,
        training_file=training.id,
        seed=seed,
        method={"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
    )


def _agent_and_ranks(worker) -> list[int]:
    (agent,) = wait_for(lambda: training_children(worker.pid), what="torchrun's agent")
    ranks = wait_for(lambda: len(found := children(agent)) == 2 and found, what="two ranks")
    return [agent, *ranks]


def test_sigterm_drains_every_rank_at_one_step_boundary_and_another_worker_resumes(
    client, services, start_worker
):
    job = _create_two_rank_job(client, seed=7)
    worker = start_worker()
    wait_for(lambda: len(metrics_steps(services, job.id)) >= 3, timeout=180, what="three training steps")
    processes = _agent_and_ranks(worker)

    worker.signal(signal.SIGTERM)
    assert worker.proc.wait(timeout=90) == 0, worker.log()
    assert not any(alive(pid) for pid in processes)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "queued"
    assert any("requeued (the worker is shutting down)" in m for m in messages(services, job.id))
    trained = max(metrics_steps(services, job.id))
    # Both ranks stopped at the same boundary and rank 0 checkpointed it: no trained step is lost.
    assert max(complete_checkpoints(services, job.id)) == trained

    start_worker(burst=True).proc.wait(timeout=300)
    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    assert resumed_from(services, job.id) == [trained]
    assert sorted(set(metrics_steps(services, job.id))) == list(range(1, 37))


def test_sigkill_of_the_worker_takes_torchrun_and_every_rank_down(client, services, start_worker):
    job = _create_two_rank_job(client, seed=11)
    worker = start_worker()
    wait_for(lambda: metrics_steps(services, job.id), timeout=180, what="a training step")
    processes = _agent_and_ranks(worker)

    worker.signal(signal.SIGKILL)
    # PR_SET_PDEATHSIG on the agent, and on each rank towards the agent: no rank trains on.
    for pid in processes:
        wait_for(lambda p=pid: not alive(p), timeout=10, what=f"process {pid} to die with the worker")
    assert wait_for(lambda: services.runtime.expire_leases(3), timeout=15, what="lease expiry") == [job.id]
    assert client.fine_tuning.jobs.retrieve(job.id).status == "queued"
    assert any("was lost (attempt 1 of 3)" in m for m in messages(services, job.id))

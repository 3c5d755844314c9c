"""JobRuntime on SQLite and PostgreSQL: atomic claims, fenced writes, lease expiry, events, checkpoints."""

from __future__ import annotations

import base64
import threading
from collections import Counter
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from openft.domain.lifecycle import JobStatus
from openft.services.context import Services
from openft.services.fine_tuning import FineTuningService
from openft.services.job_runtime import JobRuntime, LeaseLost
from openft.services.models import ModelService
from openft.settings import DEFAULT_BASE_MODEL, Settings
from openft.store.tables import JobCheckpointRow, JobEventRow, JobRow, ModelRow

LEASE = 30.0
TRAIN_LINE = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'


class FakeClock:
    """Lease times come from here, so expiry is a step of the test, not a sleep."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _build(settings: Settings) -> Services:
    services = Services.build(settings)
    # Explicit so that these tests do not depend on how the container registers them.
    services.models = ModelService(services)
    services.fine_tuning = FineTuningService(services)
    return services


@pytest.fixture
def settings(tmp_path, database_url) -> Settings:
    return Settings(home=tmp_path / "home", database_url=database_url)


@pytest.fixture
def services(settings) -> Iterator[Services]:
    services = _build(settings)
    yield services
    services.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def runtime(services, clock) -> JobRuntime:
    runtime = JobRuntime(services, clock=clock)
    services.runtime = runtime
    return runtime


@pytest.fixture
def org(services) -> str:
    return services.organizations.ensure_default().id


def create_job(services: Services, org: str, **fields) -> str:
    file = services.files.create_from_bytes(org, "train.jsonl", "fine-tune", TRAIN_LINE * 10)
    return services.fine_tuning.create(org, model=DEFAULT_BASE_MODEL, training_file=file.id, **fields).id


def validate(runtime: JobRuntime, job_id: str) -> None:
    claim = runtime.claim("validator", LEASE)
    assert claim is not None and claim.job_id == job_id and claim.phase == "validate"
    hp = {**claim.job.hyperparameters, "n_epochs": 2, "batch_size": 1, "learning_rate_multiplier": 1.0}
    assert runtime.mark_validated(job_id, claim.generation, hyperparameters=hp, stats={"total_steps": 20})


def start(runtime: JobRuntime, services: Services, org: str, **fields):
    job_id = create_job(services, org, **fields)
    validate(runtime, job_id)
    claim = runtime.claim("trainer", LEASE)
    assert claim is not None and claim.job_id == job_id and claim.phase == "train"
    return claim


def events(services: Services, job_id: str) -> list[JobEventRow]:
    with services.db.transaction() as session:
        query = select(JobEventRow).where(JobEventRow.job_id == job_id).order_by(JobEventRow.pk)
        return list(session.scalars(query))


def job(services: Services, job_id: str) -> JobRow:
    with services.db.transaction() as session:
        row = session.scalar(select(JobRow).where(JobRow.id == job_id))
        assert row is not None
        return row


def test_claim_takes_oldest_job_validates_then_trains(services, runtime, org):
    first, second = create_job(services, org), create_job(services, org)

    claim = runtime.claim("w1", LEASE)
    assert (claim.job_id, claim.phase, claim.attempts) == (first, "validate", 0)
    assert claim.job.status == "validating_files" and claim.job.base_model == DEFAULT_BASE_MODEL
    assert runtime.claim("w2", LEASE).job_id == second
    assert runtime.claim("w3", LEASE) is None  # both leased

    hp = {**claim.job.hyperparameters, "n_epochs": 3, "batch_size": 1, "learning_rate_multiplier": 1.0}
    assert runtime.mark_validated(
        first, claim.generation, hyperparameters=hp, stats={"n_examples": 10}, events=[("warn", "2 long")]
    )
    row = job(services, first)
    assert (row.status, row.hyperparameters["n_epochs"], row.stats, row.lease_owner) == (
        "queued",
        3,
        {"n_examples": 10},
        None,
    )
    assert [e.message for e in events(services, first)][-2:] == [
        "2 long",
        "Files validated, moving job to queued state",
    ]

    train = runtime.claim("w4", LEASE)
    assert (train.job_id, train.phase, train.attempts, train.generation) == (
        first,
        "train",
        1,
        claim.generation + 1,
    )
    assert job(services, first).status == "running"
    started = events(services, first)[-1]
    assert (started.message, started.data) == ("Fine-tuning job started", {})


def test_claim_races_give_each_job_to_exactly_one_worker(settings, services, runtime, org):
    job_ids = {create_job(services, org) for _ in range(12)}
    # Each worker has its own engine: separate connections race as separate processes would.
    workers = [_build(settings) for _ in range(4)]
    claimed: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(workers))

    def work(worker: Services, name: str) -> None:
        own = JobRuntime(worker)
        barrier.wait()
        while (claim := own.claim(name, LEASE)) is not None:
            with lock:
                claimed.append(claim.job_id)

    threads = [threading.Thread(target=work, args=(w, f"w{i}")) for i, w in enumerate(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for worker in workers:
        worker.close()
    assert Counter(claimed) == Counter(job_ids)  # every job, each exactly once


def test_stale_generation_cannot_write(services, runtime, clock, org):
    job_id = create_job(services, org)
    stale = runtime.claim("zombie", LEASE)
    clock.advance(LEASE + 1)
    fresh = runtime.claim("new-owner", LEASE)
    assert fresh.job_id == job_id and fresh.generation == stale.generation + 1

    with pytest.raises(LeaseLost):
        runtime.heartbeat(job_id, stale.generation, LEASE)
    assert runtime.add_event(job_id, stale.generation, "zombie says hi") is False
    assert runtime.fail(job_id, stale.generation, code="x", message="zombie failure") is False
    assert runtime.mark_validated(job_id, stale.generation, hyperparameters={}, stats={}) is False
    assert (
        runtime.record_metrics(job_id, stale.generation, step=1, total_steps=2, data={}, estimated_finish=1)
        is False
    )
    assert runtime.record_checkpoint(job_id, stale.generation, step=1, metrics={}, path="x") is None
    runtime.release(job_id, stale.generation)

    row = job(services, job_id)
    assert (row.status, row.lease_owner, row.error_code, row.estimated_finish) == (
        "validating_files",
        "new-owner",
        None,
        None,
    )
    assert not any("zombie" in e.message for e in events(services, job_id))
    assert runtime.heartbeat(job_id, fresh.generation, LEASE) is JobStatus.VALIDATING_FILES


def test_expired_training_lease_requeues_then_fails_at_the_attempt_limit(services, runtime, clock, org):
    claim = start(runtime, services, org)
    assert runtime.expire_leases(max_attempts=2) == []  # lease still valid

    clock.advance(LEASE + 1)
    assert runtime.expire_leases(max_attempts=2) == [claim.job_id]
    row = job(services, claim.job_id)
    assert (row.status, row.lease_owner, row.lease_generation) == ("queued", None, claim.generation + 1)
    lost = events(services, claim.job_id)[-1]
    assert lost.level == "warn" and "resume from its last checkpoint" in lost.message
    with pytest.raises(LeaseLost):  # the lost worker is fenced at once, before anyone reclaims
        runtime.heartbeat(claim.job_id, claim.generation, LEASE)

    second = runtime.claim("w2", LEASE)
    assert (second.attempts, second.phase) == (2, "train")
    assert events(services, claim.job_id)[-1].message.startswith("Fine-tuning job resumed")

    clock.advance(LEASE + 1)
    assert runtime.expire_leases(max_attempts=2) == [claim.job_id]
    row = job(services, claim.job_id)
    assert (row.status, row.error_code, row.lease_owner) == ("failed", "worker_lost", None)
    assert row.finished_at is not None
    assert "OPENFT_MAX_ATTEMPTS=2" in row.error_message
    assert events(services, claim.job_id)[-1].level == "error"
    assert runtime.claim("w3", LEASE) is None


def test_expired_validation_lease_makes_job_claimable_again(services, runtime, clock, org):
    job_id = create_job(services, org)
    runtime.claim("w1", LEASE)
    assert runtime.claim("w2", LEASE) is None
    clock.advance(LEASE + 1)
    assert runtime.expire_leases(max_attempts=1) == []
    assert runtime.claim("w2", LEASE).job_id == job_id


def test_repeated_steps_after_a_resume_do_not_repeat_events(services, runtime, org):
    claim = start(runtime, services, org)
    for step in (1, 2):
        data = {"step": step, "train_loss": 0.5, "total_steps": 3}
        assert runtime.record_metrics(
            claim.job_id, claim.generation, step=step, total_steps=3, data=data, estimated_finish=123
        )
    assert runtime.requeue(claim.job_id, claim.generation, reason="worker draining")
    again = runtime.claim("w2", LEASE)
    for step in (2, 3):
        data = {
            "step": step,
            "train_loss": 0.25,
            "total_steps": 3,
            "valid_loss": 1.5,
            "full_valid_loss": 0.051,
        }
        runtime.record_metrics(
            again.job_id, again.generation, step=step, total_steps=3, data=data, estimated_finish=456
        )

    metrics = [e for e in events(services, claim.job_id) if e.type == "metrics"]
    assert [e.data["step"] for e in metrics] == [1, 2, 3]
    assert metrics[1].message == "Step 2/3: training loss=0.50"
    assert (
        metrics[2].message == "Step 3/3: training loss=0.25, validation loss=1.50, full validation loss=0.05"
    )
    assert job(services, claim.job_id).estimated_finish == 456
    assert any(
        e.message.startswith("Fine-tuning job requeued (worker draining)")
        for e in events(services, claim.job_id)
    )


def test_checkpoints_keep_newest_three_and_success_names_the_final_one(services, runtime, org):
    claim = start(runtime, services, org, suffix="demo")
    names = {}
    for step in (10, 20, 30, 40):
        names[step] = runtime.record_checkpoint(
            claim.job_id,
            claim.generation,
            step=step,
            metrics={"train_loss": 1.0 / step},
            path=f"jobs/x/ckpt-{step}",
        )
        assert names[step].startswith(f"ft:{DEFAULT_BASE_MODEL}:personal:demo:")
        assert names[step].endswith(f":ckpt-step-{step}")
    assert (
        runtime.record_checkpoint(claim.job_id, claim.generation, step=40, metrics={}, path="again")
        == names[40]
    )
    assert len({n.split(":")[4] for n in names.values()}) == 4  # a fresh id8 per checkpoint

    csv = b"step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy\n1,0.5,0.9,,\n"
    name = runtime.succeed(
        claim.job_id,
        claim.generation,
        artifact_path="jobs/x/final",
        trained_tokens=1234,
        result_csv=csv,
        final_step=40,
        final_metrics={"train_loss": 0.01},
    )
    assert name.startswith(f"ft:{DEFAULT_BASE_MODEL}:personal:demo:") and "ckpt" not in name

    row = job(services, claim.job_id)
    assert (row.status, row.fine_tuned_model, row.trained_tokens, row.lease_owner) == (
        "succeeded",
        name,
        1234,
        None,
    )
    assert row.finished_at is not None and len(row.result_files) == 1
    result = services.files.get(org, row.result_files[0])
    assert (result.purpose, result.filename) == ("fine-tune-results", "step_metrics.csv")
    assert base64.b64decode(b"".join(services.files.content(org, result.id))) == csv

    with services.db.transaction() as session:
        checkpoints = session.scalars(
            select(JobCheckpointRow)
            .where(JobCheckpointRow.job_id == claim.job_id)
            .order_by(JobCheckpointRow.step_number)
        ).all()
        models = {m.id: m.kind for m in session.scalars(select(ModelRow)).all()}
    assert [(c.step_number, c.fine_tuned_model_checkpoint) for c in checkpoints] == [
        (20, names[20]),
        (30, names[30]),
        (40, name),
    ]
    assert checkpoints[-1].metrics == {"step": 40, "train_loss": 0.01}
    assert models == {names[20]: "checkpoint", names[30]: "checkpoint", name: "fine_tune"}
    assert [e.message for e in events(services, claim.job_id)][-4:] == [
        f"Checkpoint created at step 20 with Snapshot ID: {names[20]}",
        f"Checkpoint created at step 30 with Snapshot ID: {names[30]}",
        f"New fine-tuned model created: {name}",
        "The job has successfully completed",
    ]


def test_cancel_seen_by_heartbeat_stops_the_run_without_success(services, runtime, org):
    claim = start(runtime, services, org)
    services.fine_tuning.cancel(org, claim.job_id)
    assert runtime.heartbeat(claim.job_id, claim.generation, LEASE) is JobStatus.CANCELLED
    assert (
        runtime.succeed(
            claim.job_id,
            claim.generation,
            artifact_path="a",
            trained_tokens=1,
            result_csv=b"",
            final_step=1,
            final_metrics={},
        )
        is None
    )
    runtime.finish_stopped(claim.job_id, claim.generation)
    row = job(services, claim.job_id)
    assert (row.status, row.fine_tuned_model, row.result_files, row.lease_owner) == (
        "cancelled",
        None,
        [],
        None,
    )
    assert services.files.list(org, purpose="fine-tune-results")[0] == []


def test_validation_failure_sets_error_and_leaves_finished_at_null(services, runtime, org):
    job_id = create_job(services, org)
    claim = runtime.claim("w", LEASE)
    message = "Training file has 7 example(s), but must have at least 10 examples"
    assert runtime.fail(
        job_id, claim.generation, code="invalid_n_examples", message=message, param="training_file"
    )
    row = job(services, job_id)
    assert (row.status, row.error_code, row.error_param, row.finished_at) == (
        "failed",
        "invalid_n_examples",
        "training_file",
        None,
    )
    last = events(services, job_id)[-1]
    assert (last.level, last.message) == ("error", message)


def test_mark_validated_on_a_cancelled_job_refuses_and_releases(services, runtime, org):
    job_id = create_job(services, org)
    claim = runtime.claim("w", LEASE)
    services.fine_tuning.cancel(org, job_id)
    assert runtime.mark_validated(job_id, claim.generation, hyperparameters={}, stats={}) is False
    row = job(services, job_id)
    assert (row.status, row.lease_owner) == ("cancelled", None)


def test_a_drain_or_a_pause_gives_its_attempt_back_and_a_crash_does_not(services, runtime, org):
    claim = start(runtime, services, org)
    assert claim.attempts == 1
    assert runtime.requeue(claim.job_id, claim.generation, reason="the worker is shutting down")
    drained = runtime.claim("w2", LEASE)
    assert drained.attempts == 1  # the drain was not a failed attempt
    assert runtime.requeue(drained.job_id, drained.generation, reason="the child died", failed_attempt=True)
    crashed = runtime.claim("w3", LEASE)
    assert crashed.attempts == 2
    started = [e.message for e in events(services, claim.job_id) if e.message == "Fine-tuning job started"]
    assert len(started) == 1  # later claims say "resumed"

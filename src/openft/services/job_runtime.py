"""What a worker may do to a job: claim it under a lease, and make fenced writes while it holds it.

Every write checks ``lease_generation``: a worker whose lease was taken over (it stalled, its
lease expired, another worker claimed the job) can no longer change the job, its events or its
checkpoints. Events are added in the same transaction as the change they describe.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import case, func, or_, select, update

from openft import ids
from openft.domain.lifecycle import JobStatus
from openft.domain.scope import Scope
from openft.store import jobs as store
from openft.store import webhooks
from openft.store.tables import JobCheckpointRow, JobRow, ModelRow

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from openft.services.context import Services

log = logging.getLogger(__name__)

KEEP_CHECKPOINTS = 3
RESULT_FILENAME = "step_metrics.csv"
RESULT_PURPOSE = "fine-tune-results"
WORKER_LOST = "worker_lost"


class LeaseLost(Exception):
    """The job's lease generation moved on: another worker owns the job now."""


@dataclass(frozen=True)
class JobSnapshot:
    """The job as it was when claimed; field names follow ``JobRow``."""

    id: str
    organization_id: str
    status: str
    model: str
    base_model: str
    parent_model: str | None
    training_file: str
    validation_file: str | None
    suffix: str | None
    seed: int
    method_type: str
    hyperparameters: dict[str, Any]
    stats: dict[str, Any] | None
    attempts: int
    created_at: int
    grader: dict[str, Any] | None = None  # reinforcement jobs
    project_id: str | None = None

    @property
    def owner(self) -> Scope:
        """The job's organization and project: what its files and models are looked up under."""
        return Scope(self.organization_id, self.project_id)

    @classmethod
    def of(cls, row: JobRow) -> JobSnapshot:
        return cls(
            id=row.id,
            organization_id=row.organization_id,
            status=row.status,
            model=row.model,
            base_model=row.base_model,
            parent_model=row.parent_model,
            training_file=row.training_file,
            validation_file=row.validation_file,
            suffix=row.suffix,
            seed=row.seed,
            method_type=row.method_type,
            hyperparameters=dict(row.hyperparameters),
            stats=dict(row.stats) if row.stats is not None else None,
            attempts=row.attempts,
            created_at=row.created_at,
            project_id=row.project_id,
            grader=dict(row.grader) if row.grader is not None else None,
        )


@dataclass(frozen=True)
class Claim:
    job_id: str
    generation: int
    phase: Literal["validate", "train"]
    attempts: int
    job: JobSnapshot
    # artifact directory (relative to the models dir) of the ft: model this job continues, if any
    parent_path: str | None = None


def metrics_message(step: int, total_steps: int, data: dict[str, Any]) -> str:
    """OpenAI's wording: ``Step 3/30: training loss=1.23, validation loss=1.40``; reinforcement jobs
    report rewards: ``Step 3/30: training reward=0.42, validation reward=0.50``."""
    if "train_reward_mean" in data:
        message = f"Step {step}/{total_steps}: training reward={float(data['train_reward_mean']):.2f}"
        if data.get("valid_reward_mean") is not None:
            message += f", validation reward={float(data['valid_reward_mean']):.2f}"
        return message
    message = f"Step {step}/{total_steps}: training loss={float(data.get('train_loss', float('nan'))):.2f}"
    if data.get("valid_loss") is not None:
        message += f", validation loss={float(data['valid_loss']):.2f}"
    if data.get("full_valid_loss") is not None:
        message += f", full validation loss={float(data['full_valid_loss']):.2f}"
    return message


_RELEASED: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None}


def _devices(hyperparameters: dict[str, Any]) -> int | None:
    """The resolved ``n_devices`` for the claim column; None (claimed as 1) where not an integer."""
    value = hyperparameters.get("n_devices")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class JobRuntime:
    def __init__(self, services: Services, *, clock: Callable[[], float] = time.time) -> None:
        self.services = services
        self.db = services.db
        self.clock = clock

    # -- leases ----------------------------------------------------------------------------

    def claim(self, worker_id: str, lease_seconds: float) -> Claim | None:
        """Lease the oldest claimable job of either phase: ``validating_files`` (phase validate) or
        ``queued`` (phase train, which moves it to ``running``). None when there is nothing to do.
        Workers claim per phase (``claim_validation``, ``claim_training``); this serves tests and
        tools that play both parts."""
        return self._claim(worker_id, lease_seconds, (JobStatus.VALIDATING_FILES, JobStatus.QUEUED))

    def claim_validation(self, worker_id: str, lease_seconds: float) -> Claim | None:
        """Lease the oldest job in ``validating_files``: the validation lane's claim."""
        return self._claim(worker_id, lease_seconds, (JobStatus.VALIDATING_FILES,))

    def claim_training(
        self,
        worker_id: str,
        lease_seconds: float,
        *,
        free_devices: int | None = None,
        total_devices: int | None = None,
    ) -> Claim | None:
        """Lease the oldest ``queued`` job and move it to ``running``.

        A GPU worker passes how many of its GPUs are free and how many it owns: it takes the oldest
        job it could ever run (``n_devices <= total_devices``) only when that many are free now, and
        otherwise nothing, so a job that needs several GPUs is not starved by smaller ones that
        keep arriving behind it. A CPU worker passes neither and takes any job.
        """
        needs = func.coalesce(JobRow.n_devices, 1)
        candidate = () if total_devices is None else (needs <= total_devices,)
        fits = () if free_devices is None else (needs <= free_devices,)
        return self._claim(worker_id, lease_seconds, (JobStatus.QUEUED,), candidate=candidate, fits=fits)

    def _claim(
        self,
        worker_id: str,
        lease_seconds: float,
        statuses: tuple[JobStatus, ...],
        *,
        candidate: tuple = (),
        fits: tuple = (),
    ) -> Claim | None:
        now = self.clock()
        claimable = (
            JobRow.status.in_([status.value for status in statuses]),
            or_(JobRow.lease_expires_at.is_(None), JobRow.lease_expires_at < now),
        )
        # PostgreSQL: SKIP LOCKED lets concurrent claimers pass over each other's candidate rows,
        # and the outer WHERE repeats the conditions in case the row changed before we locked it.
        # SQLite ignores FOR UPDATE; its BEGIN IMMEDIATE already serializes the whole statement.
        oldest = (
            select(JobRow.pk)
            .where(*claimable, *candidate)
            .order_by(JobRow.pk)
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        starting = JobRow.status == JobStatus.QUEUED.value
        statement = (
            update(JobRow)
            .where(JobRow.pk == oldest, *claimable, *fits)
            .values(
                lease_owner=worker_id,
                lease_generation=JobRow.lease_generation + 1,
                lease_expires_at=now + lease_seconds,
                status=case((starting, JobStatus.RUNNING.value), else_=JobRow.status),
                attempts=case((starting, JobRow.attempts + 1), else_=JobRow.attempts),
                started_at=case(
                    (starting, func.coalesce(JobRow.started_at, int(now))), else_=JobRow.started_at
                ),
            )
            .returning(JobRow.id, JobRow.status, JobRow.lease_generation, JobRow.attempts)
            .execution_options(synchronize_session=False)
        )
        with self.db.transaction() as session:
            claimed = session.execute(statement).first()
            if claimed is None:
                return None
            job_id, status, generation, attempts = claimed
            phase: Literal["validate", "train"] = "train" if status == JobStatus.RUNNING.value else "validate"
            if phase == "train" and not store.add_event(
                session, job_id, "Fine-tuning job started", data={}, dedup_key="started"
            ):
                store.add_event(
                    session, job_id, "Fine-tuning job resumed, continuing from its last checkpoint", data={}
                )
            row = session.scalar(
                select(JobRow).where(JobRow.id == job_id).execution_options(populate_existing=True)
            )
            assert row is not None
            parent_path = None
            if row.parent_model is not None:
                parent = store.get_model(session, row.parent_model)
                parent_path = parent.path if parent is not None else None
            return Claim(job_id, generation, phase, attempts, JobSnapshot.of(row), parent_path)

    def heartbeat(self, job_id: str, generation: int, lease_seconds: float) -> JobStatus:
        """Renew the lease and return the job's status, so the worker sees a cancel or pause the API
        made. Raises ``LeaseLost`` if another worker owns the job now."""
        with self.db.transaction() as session:
            status = session.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.lease_generation == generation)
                .values(lease_expires_at=self.clock() + lease_seconds)
                .returning(JobRow.status)
                .execution_options(synchronize_session=False)
            ).scalar()
        if status is None:
            raise LeaseLost(job_id)
        return JobStatus(status)

    def release(self, job_id: str, generation: int) -> None:
        with self.db.transaction() as session:
            store.fenced_update(session, job_id, generation, **_RELEASED)

    def finish_stopped(self, job_id: str, generation: int) -> None:
        """The run stopped because the API cancelled or paused the job (it already set the status).
        A stop that was asked for is not a failed attempt: the attempt is given back."""
        with self.db.transaction() as session:
            store.fenced_update(session, job_id, generation, attempts=JobRow.attempts - 1, **_RELEASED)

    def expire_leases(self, max_attempts: int) -> list[str]:
        """Recover running jobs whose worker stopped renewing its lease: back to ``queued`` (they
        resume from their last checkpoint), or ``failed`` once ``attempts`` reached ``max_attempts``.
        Returns the ids of the jobs it moved. ``validating_files`` jobs need nothing: an expired
        lease makes them claimable again."""
        now = self.clock()
        with self.db.transaction() as session:
            expired = session.execute(
                select(JobRow.id, JobRow.attempts).where(
                    JobRow.status == JobStatus.RUNNING.value, JobRow.lease_expires_at < now
                )
            ).all()
        moved = []
        for job_id, attempts in expired:
            with self.db.transaction() as session:
                # Moving the generation fences the lost worker at once, should it wake up.
                values: dict[str, Any] = {**_RELEASED, "lease_generation": JobRow.lease_generation + 1}
                if attempts >= max_attempts:
                    message = (
                        f"The worker running this job stopped responding, and the job has been tried {attempts} "
                        f"time(s), the limit (OPENFT_MAX_ATTEMPTS={max_attempts}). Check the worker's logs "
                        "(out of memory? killed?), then create a new job."
                    )
                    target = JobStatus.FAILED
                    values.update(
                        error_code=WORKER_LOST,
                        error_message=message,
                        error_param=None,
                        finished_at=store.now(),
                    )
                else:
                    message = (
                        f"The worker running this job was lost (attempt {attempts} of {max_attempts}); the job is "
                        "queued again and will resume from its last checkpoint."
                    )
                    target = JobStatus.QUEUED
                result = session.execute(
                    update(JobRow)
                    .where(
                        JobRow.id == job_id,
                        JobRow.status == JobStatus.RUNNING.value,
                        JobRow.lease_expires_at < now,
                    )
                    .values(status=target.value, estimated_finish=None, **values)
                )
                if result.rowcount != 1:
                    continue  # a heartbeat renewed it, or the API moved it, meanwhile
                if target is JobStatus.FAILED:
                    webhooks.enqueue_job_event(session, job_id, target)
                level = "error" if target is JobStatus.FAILED else "warn"
                store.add_event(session, job_id, message, level=level, data={})
                moved.append(job_id)
        return moved

    # -- events and progress ---------------------------------------------------------------

    def add_event(
        self,
        job_id: str,
        generation: int,
        message: str,
        *,
        level: str = "info",
        type: str = "message",
        data: dict[str, Any] | None = None,
        dedup_key: str | None = None,
    ) -> bool:
        """Add an event. Returns False when the lease is lost or the job already ended (cancelled
        meanwhile: nothing follows its closing event); a repeated ``dedup_key`` (a step run again
        after a resume) is silently skipped and returns True."""
        with self.db.transaction() as session:
            if not store.fenced_update(session, job_id, generation, unfinished=True):
                return False
            store.add_event(session, job_id, message, level=level, type=type, data=data, dedup_key=dedup_key)
            return True

    def record_metrics(
        self,
        job_id: str,
        generation: int,
        *,
        step: int,
        total_steps: int,
        data: dict[str, Any],
        estimated_finish: int | None,
        tokens_per_second: float | None = None,
    ) -> bool:
        progress: dict[str, Any] = {"estimated_finish": estimated_finish}
        if tokens_per_second is not None:
            progress["tokens_per_second"] = tokens_per_second
        with self.db.transaction() as session:
            if not store.fenced_update(session, job_id, generation, unfinished=True, **progress):
                return False
            store.add_event(
                session,
                job_id,
                metrics_message(step, total_steps, data),
                type="metrics",
                data=data,
                dedup_key=f"step-{step}",
            )
            return True

    def record_checkpoint(
        self, job_id: str, generation: int, *, step: int, metrics: dict[str, Any], path: str
    ) -> str | None:
        """Register a servable checkpoint (idempotent per step) and keep only the newest three.
        Returns its model name, or None when the lease is lost or the job already ended."""
        with self.db.transaction() as session:
            if not store.fenced_update(session, job_id, generation, unfinished=True):
                return None
            for existing in store.checkpoints_by_step(session, job_id):
                if existing.step_number == step:
                    return existing.fine_tuned_model_checkpoint
            job = store.get_job(session, job_id)
            assert job is not None
            slug = store.org_slug(session, job.organization_id)
            name = ids.checkpoint_model_name(
                ids.named_base(job.model, job.parent_model), slug, job.suffix, ids.model_id8(), step
            )
            self._add_checkpoint(
                session, job, step=step, metrics=metrics, path=path, name=name, servable=True
            )
            self._prune_checkpoints(session, job_id)
            return name

    def artifact_keys(self, job_id: str) -> set[str]:
        """The artifact trees the job's rows name (its checkpoints and fine-tuned model): what
        object storage must keep of it."""
        with self.db.read() as session:
            keys = set(
                session.scalars(select(JobCheckpointRow.path).where(JobCheckpointRow.job_id == job_id))
            )
            keys |= set(session.scalars(select(ModelRow.path).where(ModelRow.job_id == job_id)))
        return keys

    # -- outcomes --------------------------------------------------------------------------

    def mark_validated(
        self,
        job_id: str,
        generation: int,
        *,
        hyperparameters: dict[str, Any],
        stats: dict[str, Any],
        events: Iterable[tuple[str, str]] = (),
    ) -> bool:
        """``validating_files`` -> ``queued`` with the resolved hyperparameters and what validation
        learnt; ``events`` are (level, message) pairs written before "Files validated"."""
        with self.db.transaction() as session:
            moved = store.compare_and_set(
                session,
                job_id,
                JobStatus.VALIDATING_FILES,
                JobStatus.QUEUED,
                generation=generation,
                hyperparameters=hyperparameters,
                stats=stats,
                queued_at=store.now(),
                n_devices=_devices(hyperparameters),
                **_RELEASED,
            )
            if not moved:
                store.fenced_update(session, job_id, generation, **_RELEASED)
                return False
            for level, message in events:
                store.add_event(session, job_id, message, level=level, data={})
            store.add_event(session, job_id, "Files validated, moving job to queued state", data={})
            return True

    def fail(
        self, job_id: str, generation: int, *, code: str, message: str, param: str | None = None
    ) -> bool:
        """``validating_files`` or ``running`` -> ``failed`` with ``error`` set. OpenAI leaves
        ``finished_at`` null on a job that failed validation; a failed run gets it."""
        with self.db.transaction() as session:
            job = store.get_job(session, job_id)
            if job is None or job.lease_generation != generation:
                return False
            current = JobStatus(job.status)
            values: dict[str, Any] = {
                "error_code": code,
                "error_message": message,
                "error_param": param,
                "estimated_finish": None,
                **_RELEASED,
            }
            if current is JobStatus.RUNNING:
                values["finished_at"] = store.now()
            moved = current in (JobStatus.VALIDATING_FILES, JobStatus.RUNNING) and store.compare_and_set(
                session, job_id, current, JobStatus.FAILED, generation=generation, **values
            )
            if not moved:
                store.fenced_update(session, job_id, generation, **_RELEASED)
                return False
            store.add_event(session, job_id, message, level="error", data={})
            return True

    def requeue(self, job_id: str, generation: int, *, reason: str, failed_attempt: bool = False) -> bool:
        """``running`` -> ``queued``; the next claim resumes it. Only a ``failed_attempt`` (the child
        died) counts towards ``max_attempts``; a drain gives its attempt back."""
        refund: dict[str, Any] = {} if failed_attempt else {"attempts": JobRow.attempts - 1}
        with self.db.transaction() as session:
            moved = store.compare_and_set(
                session,
                job_id,
                JobStatus.RUNNING,
                JobStatus.QUEUED,
                generation=generation,
                estimated_finish=None,
                **refund,
                **_RELEASED,
            )
            if not moved:
                store.fenced_update(session, job_id, generation, **_RELEASED)
                return False
            store.add_event(
                session,
                job_id,
                f"Fine-tuning job requeued ({reason}); it will resume from its last checkpoint",
                data={},
            )
            return True

    def succeed(
        self,
        job_id: str,
        generation: int,
        *,
        artifact_path: str,
        trained_tokens: int,
        result_csv: bytes,
        final_step: int,
        final_metrics: dict[str, Any],
    ) -> str | None:
        """``running`` -> ``succeeded``: mint the model name, register the model, store the result
        file, and emit OpenAI's closing events. Returns the model name, or None if the job was
        cancelled meanwhile or the lease is lost.

        The result file holds the CSV base64-encoded, as OpenAI serves it: the cookbook's
        ``base64.b64decode(client.files.content(id).read())`` works unchanged.
        """
        with self.db.transaction() as session:
            job = store.get_job(session, job_id)
            if job is None or job.lease_generation != generation:
                return None
            if job.status != JobStatus.RUNNING.value:
                # Cancelled or paused by the API while the last step ran: give the lease back.
                store.fenced_update(session, job_id, generation, **_RELEASED)
                return None
            owner = Scope(job.organization_id, job.project_id)
        # The file service writes in a transaction of its own: on SQLite a second writer inside
        # ours would wait on our own lock, so the file comes first and is removed if we lose.
        result_file = self.services.files.create_from_bytes(
            owner, RESULT_FILENAME, RESULT_PURPOSE, base64.b64encode(result_csv)
        )
        name = self._finish_success(
            job_id,
            generation,
            artifact_path=artifact_path,
            trained_tokens=trained_tokens,
            result_file_id=result_file.id,
            final_step=final_step,
            final_metrics=final_metrics,
        )
        if name is None:
            self._discard_file(owner, result_file.id)
        return name

    def _finish_success(
        self,
        job_id: str,
        generation: int,
        *,
        artifact_path: str,
        trained_tokens: int,
        result_file_id: str,
        final_step: int,
        final_metrics: dict[str, Any],
    ) -> str | None:
        with self.db.transaction() as session:
            job = store.get_job(session, job_id)
            assert job is not None
            slug = store.org_slug(session, job.organization_id)
            name = ids.fine_tuned_model_name(
                ids.named_base(job.model, job.parent_model), slug, job.suffix, ids.model_id8()
            )
            now = store.now()
            moved = store.compare_and_set(
                session,
                job_id,
                JobStatus.RUNNING,
                JobStatus.SUCCEEDED,
                generation=generation,
                fine_tuned_model=name,
                trained_tokens=trained_tokens,
                finished_at=now,
                estimated_finish=None,
                result_files=[result_file_id],
                error_code=None,
                error_message=None,
                error_param=None,
                **_RELEASED,
            )
            if not moved:
                store.fenced_update(session, job_id, generation, **_RELEASED)
                return None
            # The final checkpoint carries the model's own name (OpenAI does the same); a
            # checkpoint the run already registered at that step gives way to it.
            for existing in store.checkpoints_by_step(session, job_id):
                if existing.step_number == final_step:
                    store.delete_checkpoint(session, existing)
            session.flush()
            self._add_checkpoint(
                session,
                job,
                step=final_step,
                metrics=final_metrics,
                path=artifact_path,
                name=name,
                servable=False,
            )
            session.add(
                ModelRow(
                    id=name,
                    organization_id=job.organization_id,
                    project_id=job.project_id,
                    job_id=job_id,
                    kind="fine_tune",
                    base_model=job.base_model,
                    path=artifact_path,
                    created_at=now,
                )
            )
            self._prune_checkpoints(session, job_id)
            kept = sorted(store.checkpoints_by_step(session, job_id), key=lambda c: c.step_number)
            for checkpoint in kept:
                if checkpoint.fine_tuned_model_checkpoint != name:
                    store.add_event(
                        session,
                        job_id,
                        f"Checkpoint created at step {checkpoint.step_number} with Snapshot ID: "
                        f"{checkpoint.fine_tuned_model_checkpoint}",
                        data={},
                    )
            store.add_event(session, job_id, f"New fine-tuned model created: {name}", data={})
            store.add_event(session, job_id, "The job has successfully completed", data={})
            return name

    # -- internals -------------------------------------------------------------------------

    def _add_checkpoint(
        self,
        session: Session,
        job: JobRow,
        *,
        step: int,
        metrics: dict[str, Any],
        path: str,
        name: str,
        servable: bool,
    ) -> None:
        now = store.now()
        session.add(
            JobCheckpointRow(
                id=ids.checkpoint_id(),
                job_id=job.id,
                created_at=now,
                step_number=step,
                metrics={"step": step, **metrics},
                fine_tuned_model_checkpoint=name,
                path=path,
            )
        )
        if servable:
            session.add(
                ModelRow(
                    id=name,
                    organization_id=job.organization_id,
                    project_id=job.project_id,
                    job_id=job.id,
                    kind="checkpoint",
                    base_model=job.base_model,
                    path=path,
                    created_at=now,
                )
            )
        session.flush()

    def _prune_checkpoints(self, session: Session, job_id: str) -> None:
        for old in store.checkpoints_by_step(session, job_id)[KEEP_CHECKPOINTS:]:
            store.delete_checkpoint(session, old)

    def _discard_file(self, owner: Scope, file_id: str) -> None:
        try:
            self.services.files.delete(owner, file_id)
        except Exception:  # an orphan result file is harmless; never turn a lost race into a crash
            log.exception("could not remove result file %s of a job that did not succeed", file_id)

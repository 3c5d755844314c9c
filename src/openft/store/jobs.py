"""Queries and compare-and-set writes on fine-tuning jobs, their events, checkpoints and models."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import delete, exists, func, select, update
from sqlalchemy.orm import Session

from openft import ids
from openft.domain.lifecycle import TERMINAL, JobStatus, transition
from openft.domain.scope import Scope
from openft.store import webhooks
from openft.store.ownership import owned_by
from openft.store.tables import (
    CheckpointPermissionRow,
    JobCheckpointRow,
    JobEventRow,
    JobRow,
    ModelRow,
    OrganizationRow,
)


def now() -> int:
    return int(time.time())


def get_job(session: Session, job_id: str, scope: Scope | None = None) -> JobRow | None:
    """The job; with ``scope``, only if it belongs to that organization and project."""
    query = select(JobRow).where(JobRow.id == job_id)
    if scope is not None:
        query = query.where(*owned_by(JobRow, scope))
    return session.scalar(query)


def org_slug(session: Session, organization_id: str) -> str:
    """The organization's name as it appears in ``ft:`` model names and ``owned_by``."""
    name = session.scalar(select(OrganizationRow.name).where(OrganizationRow.id == organization_id))
    return name if name is not None else ids.slug(organization_id)


def _page(session: Session, query, table, after_pk: int | None, limit: int) -> tuple[list[Any], bool]:
    """One newest-first page of ``query`` after the row with ``after_pk``; returns (rows, has_more)."""
    if after_pk is not None:
        query = query.where(table.pk < after_pk)
    rows = list(session.scalars(query.order_by(table.pk.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def job_pk(session: Session, scope: Scope, job_id: str) -> int | None:
    return session.scalar(select(JobRow.pk).where(*owned_by(JobRow, scope), JobRow.id == job_id))


def list_jobs(
    session: Session, scope: Scope, *, after_pk: int | None, limit: int, metadata: dict[str, str]
) -> tuple[list[JobRow], bool]:
    query = select(JobRow).where(*owned_by(JobRow, scope))
    sqlite = session.get_bind().dialect.name == "sqlite"
    for key, value in metadata.items():
        query = query.where(
            _metadata_is(key, value) if sqlite else JobRow.job_metadata[key].as_string() == value
        )
    return _page(session, query, JobRow, after_pk, limit)


def _metadata_is(key: str, value: str):
    """SQLite: ``metadata[key] == value`` for any key. SQLAlchemy's JSON index writes the key into
    a JSON path (``$."key"``), which a key holding ``"`` breaks; json_each compares it as a
    bound value instead. (PostgreSQL's ``->>`` already takes the key as a bound value.)"""
    pairs = func.json_each(JobRow.job_metadata).table_valued("key", "value", "type").alias("pair")
    return exists(
        select(1).select_from(pairs).where(pairs.c.key == key, pairs.c.type == "text", pairs.c.value == value)
    )


def event_pk(session: Session, job_id: str, event_id: str) -> int | None:
    return session.scalar(
        select(JobEventRow.pk).where(JobEventRow.job_id == job_id, JobEventRow.id == event_id)
    )


def list_events(
    session: Session, job_id: str, *, after_pk: int | None, limit: int
) -> tuple[list[JobEventRow], bool]:
    return _page(
        session, select(JobEventRow).where(JobEventRow.job_id == job_id), JobEventRow, after_pk, limit
    )


def checkpoint_pk(session: Session, job_id: str, checkpoint_id: str) -> int | None:
    return session.scalar(
        select(JobCheckpointRow.pk).where(
            JobCheckpointRow.job_id == job_id, JobCheckpointRow.id == checkpoint_id
        )
    )


def list_checkpoints(
    session: Session, job_id: str, *, after_pk: int | None, limit: int
) -> tuple[list[JobCheckpointRow], bool]:
    query = select(JobCheckpointRow).where(JobCheckpointRow.job_id == job_id)
    return _page(session, query, JobCheckpointRow, after_pk, limit)


def add_event(
    session: Session,
    job_id: str,
    message: str,
    *,
    level: str = "info",
    type: str = "message",
    data: dict[str, Any] | None = None,
    dedup_key: str | None = None,
) -> bool:
    """Insert an event; with ``dedup_key``, only if that key is new for the job. Returns whether it
    was inserted. Callers hold the job's row lock (a fenced UPDATE, or SQLite's write lock), so
    check-then-insert cannot race with another writer of the same job."""
    if dedup_key is not None:
        exists = session.scalar(
            select(JobEventRow.pk).where(JobEventRow.job_id == job_id, JobEventRow.dedup_key == dedup_key)
        )
        if exists is not None:
            return False
    session.add(
        JobEventRow(
            id=ids.event_id(),
            job_id=job_id,
            created_at=now(),
            level=level,
            message=message,
            type=type,
            data=data if data is not None else {},  # OpenAI sends an object, never null
            dedup_key=dedup_key,
        )
    )
    # Flush now so that events of one transaction get increasing pks in the order they were added.
    session.flush()
    return True


def compare_and_set(
    session: Session,
    job_id: str,
    expected: JobStatus,
    target: JobStatus,
    *,
    generation: int | None = None,
    **values: Any,
) -> bool:
    """Move a job from ``expected`` to ``target`` (if the lifecycle allows it) only if it is still
    in ``expected`` and, for a worker, still leased under ``generation``. Returns whether it moved.

    A move into a terminal status also writes its webhook deliveries (the outbox) in this same
    transaction: the event is sent if and only if the change commits."""
    transition(expected, target)
    query = update(JobRow).where(JobRow.id == job_id, JobRow.status == expected.value)
    if generation is not None:
        query = query.where(JobRow.lease_generation == generation)
    result = session.execute(query.values(status=target.value, **values))
    moved = result.rowcount == 1
    if moved and target in TERMINAL:
        webhooks.enqueue_job_event(session, job_id, target)
    return moved


def fenced_update(
    session: Session, job_id: str, generation: int, *, unfinished: bool = False, **values: Any
) -> bool:
    """Write ``values`` only while the lease generation is still ``generation`` (and, with
    ``unfinished``, only while the job has not reached a terminal status: nothing a worker reports
    may follow a job's closing event).

    With no values it still writes (``lease_generation`` onto itself) so that PostgreSQL takes the
    row lock: whatever the caller adds after it cannot interleave with a claim that moves the
    generation, or with the API's cancel.
    """
    if not values:
        values = {"lease_generation": JobRow.lease_generation}
    query = update(JobRow).where(JobRow.id == job_id, JobRow.lease_generation == generation)
    if unfinished:
        query = query.where(JobRow.status.notin_([s.value for s in TERMINAL]))
    result = session.execute(query.values(**values))
    return result.rowcount == 1


def get_model(session: Session, name: str) -> ModelRow | None:
    return session.scalar(select(ModelRow).where(ModelRow.id == name))


def list_models(session: Session, scope: Scope) -> list[ModelRow]:
    query = select(ModelRow).where(*owned_by(ModelRow, scope))
    return list(session.scalars(query.order_by(ModelRow.pk)))


def checkpoints_by_step(session: Session, job_id: str) -> list[JobCheckpointRow]:
    """A job's checkpoints, highest step first."""
    query = select(JobCheckpointRow).where(JobCheckpointRow.job_id == job_id)
    return list(
        session.scalars(query.order_by(JobCheckpointRow.step_number.desc(), JobCheckpointRow.pk.desc()))
    )


def delete_checkpoint(session: Session, checkpoint: JobCheckpointRow) -> None:
    """Delete a checkpoint row, the servable checkpoint model of the same name and its permissions."""
    deleted = session.execute(
        delete(ModelRow).where(
            ModelRow.id == checkpoint.fine_tuned_model_checkpoint, ModelRow.kind == "checkpoint"
        )
    )
    if deleted.rowcount:
        delete_permissions(session, [checkpoint.fine_tuned_model_checkpoint])
    session.execute(delete(JobCheckpointRow).where(JobCheckpointRow.pk == checkpoint.pk))


def delete_permissions(session: Session, model_ids: list[str]) -> None:
    """A deleted model's shares go with it: a later model of the same name is not shared by accident."""
    if model_ids:
        session.execute(
            delete(CheckpointPermissionRow).where(CheckpointPermissionRow.model_id.in_(model_ids))
        )

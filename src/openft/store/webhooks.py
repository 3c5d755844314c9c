"""The webhook outbox: deliveries written with a job's terminal change, leased, attempted, retried."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from openft import ids
from openft.domain.lifecycle import JobStatus
from openft.store.tables import JobRow, WebhookAttemptRow, WebhookDeliveryRow, WebhookEndpointRow

# OpenAI's webhook event types for fine-tuning jobs, by the terminal status they announce.
JOB_EVENT_TYPES: dict[JobStatus, str] = {
    JobStatus.SUCCEEDED: "fine_tuning.job.succeeded",
    JobStatus.FAILED: "fine_tuning.job.failed",
    JobStatus.CANCELLED: "fine_tuning.job.cancelled",
}
EVENT_TYPES = tuple(JOB_EVENT_TYPES.values())

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


def enqueue_job_event(session: Session, job_id: str, status: JobStatus) -> int:
    """Write one delivery per subscribed endpoint of the job's organization, in the caller's
    transaction. All share one event id: the ``webhook-id`` a receiver deduplicates on. Returns how
    many deliveries were written."""
    event_type = JOB_EVENT_TYPES.get(status)
    if event_type is None:
        return 0
    organization_id = session.scalar(select(JobRow.organization_id).where(JobRow.id == job_id))
    if organization_id is None:
        return 0
    endpoints = [
        endpoint
        for endpoint in session.scalars(
            select(WebhookEndpointRow).where(WebhookEndpointRow.organization_id == organization_id)
        )
        if event_type in (endpoint.events or [])
    ]
    if not endpoints:
        return 0
    now = time.time()
    event_id = ids.webhook_event_id()
    payload = {
        "id": event_id,
        "object": "event",
        "type": event_type,
        "created_at": int(now),
        "data": {"id": job_id},
    }
    for endpoint in endpoints:
        session.add(
            WebhookDeliveryRow(
                event_id=event_id,
                endpoint_id=endpoint.id,
                type=event_type,
                payload=payload,
                created_at=int(now),
                status=PENDING,
                attempts=0,
                next_attempt_at=now,
            )
        )
    session.flush()
    return len(endpoints)


def claim_due(session: Session, owner: str, *, now: float, lease_seconds: float) -> WebhookDeliveryRow | None:
    """Lease the pending delivery that has waited longest past its due time, or None.

    Same pattern as a job claim: SKIP LOCKED on PostgreSQL, BEGIN IMMEDIATE on SQLite; a lease left
    by a crashed sender expires and the delivery is tried again (at least once, never lost)."""
    claimable = (
        WebhookDeliveryRow.status == PENDING,
        WebhookDeliveryRow.next_attempt_at <= now,
        or_(WebhookDeliveryRow.lease_expires_at.is_(None), WebhookDeliveryRow.lease_expires_at < now),
    )
    candidate = (
        select(WebhookDeliveryRow.pk)
        .where(*claimable)
        .order_by(WebhookDeliveryRow.next_attempt_at, WebhookDeliveryRow.pk)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    pk = session.execute(
        update(WebhookDeliveryRow)
        .where(WebhookDeliveryRow.pk == candidate, *claimable)
        .values(lease_owner=owner, lease_expires_at=now + lease_seconds)
        .returning(WebhookDeliveryRow.pk)
        .execution_options(synchronize_session=False)
    ).scalar()
    if pk is None:
        return None
    return session.scalar(
        select(WebhookDeliveryRow)
        .where(WebhookDeliveryRow.pk == pk)
        .execution_options(populate_existing=True)
    )


def record_attempt(
    session: Session,
    delivery: WebhookDeliveryRow,
    owner: str,
    *,
    attempted_at: float,
    status_code: int | None,
    error: str | None,
    duration_ms: int,
    succeeded: bool,
    next_attempt_at: float | None,
) -> bool:
    """Log the attempt and settle the delivery: delivered, retried at ``next_attempt_at``, or failed
    for good when that is None. Fenced by the lease: False if another sender took the delivery over."""
    values: dict[str, Any] = {
        "attempts": WebhookDeliveryRow.attempts + 1,
        "lease_owner": None,
        "lease_expires_at": None,
    }
    if succeeded:
        values.update(status=DELIVERED, delivered_at=int(attempted_at))
    elif next_attempt_at is None:
        values.update(status=FAILED)
    else:
        values.update(next_attempt_at=next_attempt_at)
    result = session.execute(
        update(WebhookDeliveryRow)
        .where(
            WebhookDeliveryRow.pk == delivery.pk,
            WebhookDeliveryRow.lease_owner == owner,
            WebhookDeliveryRow.status == PENDING,
        )
        .values(**values)
    )
    if result.rowcount != 1:
        return False
    session.add(
        WebhookAttemptRow(
            delivery_pk=delivery.pk,
            endpoint_id=delivery.endpoint_id,
            event_id=delivery.event_id,
            attempted_at=attempted_at,
            status_code=status_code,
            error=error,
            duration_ms=duration_ms,
            succeeded=succeeded,
        )
    )
    return True

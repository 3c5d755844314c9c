"""What operators scrape at /metrics, read from the database so every API replica reports the same
fleet-wide numbers: jobs by status, queue wait and run time, trained tokens, throughput of running
jobs, busy workers, webhook deliveries."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, case, func, select

from openft.domain.lifecycle import TERMINAL, JobStatus
from openft.store.tables import JobRow, WebhookAttemptRow, WebhookDeliveryRow

if TYPE_CHECKING:
    from openft.services.context import Services

# Seconds: from a minute to a day, for jobs that wait and train for minutes to hours.
DURATION_BUCKETS: tuple[float, ...] = (60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400)


@dataclass(frozen=True)
class Histogram:
    """Cumulative counts per upper bound (``le``), as Prometheus histograms expose them."""

    buckets: list[tuple[float, int]]
    count: int
    sum: float


@dataclass(frozen=True)
class WorkerInventory:
    workers: int
    gpus_total: int
    gpus_free: int


@dataclass(frozen=True)
class FleetMetrics:
    jobs_by_status: dict[str, int]
    queue_wait: Histogram
    run_time: Histogram
    trained_tokens: int
    tokens_per_second: dict[str, float]  # running job id -> its latest step's training throughput
    busy_workers: int  # distinct workers holding a live lease on a job
    webhook_deliveries: dict[str, int]  # pending | delivered | failed
    webhook_failed_attempts: int
    inventory: WorkerInventory | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def worker_inventory(services: Services) -> WorkerInventory:
    """Live workers (the registry: seen within a lease) and their GPUs, for ``openft_workers``,
    ``openft_gpus`` and ``openft_gpus_free``."""
    capacity = services.workers.capacity()
    return WorkerInventory(workers=capacity.workers, gpus_total=capacity.gpus, gpus_free=capacity.free_gpus)


class OperatorMetricsService:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.db = services.db

    def snapshot(self) -> FleetMetrics:
        now = time.time()
        started = and_(JobRow.started_at.is_not(None), JobRow.queued_at.is_not(None))
        finished = and_(
            JobRow.started_at.is_not(None),
            JobRow.finished_at.is_not(None),
            JobRow.status.in_([s.value for s in TERMINAL]),
        )
        with self.db.transaction() as session:
            counts = dict(session.execute(select(JobRow.status, func.count()).group_by(JobRow.status)).all())
            queue_wait = _histogram(session, JobRow.started_at - JobRow.queued_at, started)
            run_time = _histogram(session, JobRow.finished_at - JobRow.started_at, finished)
            trained = session.scalar(
                select(func.coalesce(func.sum(JobRow.trained_tokens), 0)).where(
                    JobRow.status == JobStatus.SUCCEEDED.value
                )
            )
            throughput = dict(
                session.execute(
                    select(JobRow.id, JobRow.tokens_per_second).where(
                        JobRow.status == JobStatus.RUNNING.value, JobRow.tokens_per_second.is_not(None)
                    )
                ).all()
            )
            busy = session.scalar(
                select(func.count(func.distinct(JobRow.lease_owner))).where(
                    JobRow.lease_owner.is_not(None), JobRow.lease_expires_at > now
                )
            )
            deliveries = dict(
                session.execute(
                    select(WebhookDeliveryRow.status, func.count()).group_by(WebhookDeliveryRow.status)
                ).all()
            )
            failed_attempts = session.scalar(
                select(func.count())
                .select_from(WebhookAttemptRow)
                .where(WebhookAttemptRow.succeeded.is_(False))
            )
        return FleetMetrics(
            jobs_by_status={s.value: int(counts.get(s.value, 0)) for s in JobStatus},
            queue_wait=queue_wait,
            run_time=run_time,
            trained_tokens=int(trained or 0),
            tokens_per_second={k: float(v) for k, v in throughput.items()},
            busy_workers=int(busy or 0),
            webhook_deliveries={s: int(deliveries.get(s, 0)) for s in ("pending", "delivered", "failed")},
            webhook_failed_attempts=int(failed_attempts or 0),
            inventory=worker_inventory(self.services),
        )


def _histogram(session, value, where) -> Histogram:
    """One aggregate query: a cumulative count per bucket, the total count and the sum."""
    columns = [func.sum(case((value <= bound, 1), else_=0)) for bound in DURATION_BUCKETS]
    row = session.execute(
        select(func.count(), func.coalesce(func.sum(value), 0), *columns).where(where)
    ).one()
    count, total, *cumulative = row
    return Histogram(
        buckets=[(bound, int(n or 0)) for bound, n in zip(DURATION_BUCKETS, cumulative, strict=True)],
        count=int(count),
        sum=float(total),
    )

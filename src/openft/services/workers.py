"""The workers registry: which workers are alive, what devices they own and which of them are free.

Each worker writes its own row (``WorkerRow``): inserted when it starts, refreshed by its heartbeat,
deleted when it stops. A worker that died without deleting its row stops being *live* once it has
not been seen for ``lease_seconds``, the same time after which its jobs' leases lapse; rows not seen
for ``FORGET_AFTER_SECONDS`` are deleted by the next worker that starts.

``capacity()`` is the one question the rest of the service asks: can any live worker run CUDA
(refuse what needs a GPU at create time), how many workers and free GPUs there are (``/metrics``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select, update

from openft.store.tables import WorkerRow

if TYPE_CHECKING:
    from openft.services.context import Services

FORGET_AFTER_SECONDS = 24 * 3600.0
CUDA = "cuda"
CPU = "cpu"


@dataclass(frozen=True)
class Device:
    """One device a worker trains on: a CUDA GPU (``index`` as nvidia-smi numbers it) or the CPU."""

    kind: str  # "cuda" | "cpu"
    name: str
    index: int | None = None
    memory_bytes: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "index": self.index, "name": self.name, "memory_bytes": self.memory_bytes}

    @classmethod
    def of(cls, data: dict[str, Any]) -> Device:
        return cls(
            kind=data["kind"],
            name=data["name"],
            index=data.get("index"),
            memory_bytes=data.get("memory_bytes"),
        )


@dataclass(frozen=True)
class RunningJob:
    job_id: str
    devices: tuple[int, ...] = ()  # the GPUs (indices) the job holds; empty on a CPU worker


@dataclass(frozen=True)
class WorkerInfo:
    """A worker as registered: ``slots`` is how many jobs it trains at once (0: validation only)."""

    id: str
    host: str
    pid: int
    devices: tuple[Device, ...]
    slots: int
    running: tuple[RunningJob, ...] = ()
    started_at: int = 0
    last_seen: float = 0.0

    @property
    def gpus(self) -> tuple[Device, ...]:
        return tuple(d for d in self.devices if d.kind == CUDA)

    @property
    def free_gpus(self) -> tuple[Device, ...]:
        busy = {index for job in self.running for index in job.devices}
        return tuple(d for d in self.gpus if d.index not in busy)


@dataclass(frozen=True)
class Capacity:
    """What the live workers can take on now."""

    workers: int  # live workers, validation-only ones included
    training_workers: int  # live workers with at least one training slot
    gpus: int  # CUDA devices owned by live workers
    free_gpus: int  # of those, held by no running job
    running_jobs: int

    @property
    def can_run_cuda(self) -> bool:
        """Whether some live worker owns a GPU: jobs that need CUDA (qlora) can run at all."""
        return self.gpus > 0


def _row_info(row: WorkerRow) -> WorkerInfo:
    return WorkerInfo(
        id=row.id,
        host=row.host,
        pid=row.pid,
        devices=tuple(Device.of(d) for d in row.devices),
        slots=row.slots,
        running=tuple(RunningJob(r["job_id"], tuple(r.get("devices") or ())) for r in row.running),
        started_at=row.started_at,
        last_seen=row.last_seen,
    )


def _running_json(running: Iterable[RunningJob]) -> list[dict[str, Any]]:
    return [{"job_id": r.job_id, "devices": list(r.devices)} for r in running]


class WorkerRegistry:
    def __init__(self, services: Services, *, clock: Callable[[], float] = time.time) -> None:
        self.db = services.db
        self.settings = services.settings
        self.clock = clock

    def register(self, worker: WorkerInfo) -> None:
        """Record a worker that starts (replacing a row with its id), and forget long-dead ones."""
        now = self.clock()
        with self.db.transaction() as session:
            session.execute(delete(WorkerRow).where(WorkerRow.last_seen < now - FORGET_AFTER_SECONDS))
            session.execute(delete(WorkerRow).where(WorkerRow.id == worker.id))
            session.add(
                WorkerRow(
                    id=worker.id,
                    host=worker.host,
                    pid=worker.pid,
                    devices=[d.to_json() for d in worker.devices],
                    slots=worker.slots,
                    running=_running_json(worker.running),
                    started_at=int(now),
                    last_seen=now,
                )
            )

    def heartbeat(self, worker: WorkerInfo) -> None:
        """Refresh ``last_seen`` and the running jobs; re-register a row that was deleted meanwhile
        (a worker cut off from the database for a day is forgotten, then comes back)."""
        with self.db.transaction() as session:
            found = session.execute(
                update(WorkerRow)
                .where(WorkerRow.id == worker.id)
                .values(last_seen=self.clock(), running=_running_json(worker.running))
                .execution_options(synchronize_session=False)
            ).rowcount
        if not found:
            self.register(worker)

    def deregister(self, worker_id: str) -> None:
        with self.db.transaction() as session:
            session.execute(delete(WorkerRow).where(WorkerRow.id == worker_id))

    def live(self) -> list[WorkerInfo]:
        """Workers seen within a lease, oldest first."""
        since = self.clock() - self.settings.lease_seconds
        with self.db.transaction() as session:
            rows = session.scalars(
                select(WorkerRow).where(WorkerRow.last_seen >= since).order_by(WorkerRow.pk)
            )
            return [_row_info(row) for row in rows]

    def capacity(self) -> Capacity:
        workers = self.live()
        return Capacity(
            workers=len(workers),
            training_workers=sum(1 for w in workers if w.slots > 0),
            gpus=sum(len(w.gpus) for w in workers),
            free_gpus=sum(len(w.free_gpus) for w in workers),
            running_jobs=sum(len(w.running) for w in workers),
        )

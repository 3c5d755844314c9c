"""Keeps a job's lease alive from a background thread and relays the job's status to the run."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from openft.domain.lifecycle import JobStatus

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Renews the lease every ``heartbeat_seconds`` and polls the job's status every
    ``poll_seconds``; calls ``on_status`` when the status changes (the API cancelled or paused
    the job) and sets ``lost`` when another worker took the job over (fencing)."""

    def __init__(
        self,
        runtime,
        job_id: str,
        generation: int,
        *,
        lease_seconds: float,
        heartbeat_seconds: float,
        poll_seconds: float,
        on_status: Callable[[JobStatus], None] | None = None,
    ) -> None:
        self.runtime = runtime
        self.job_id = job_id
        self.generation = generation
        self.lease_seconds = lease_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.poll_seconds = min(poll_seconds, heartbeat_seconds)
        self.on_status = on_status
        self.status: JobStatus | None = None
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        from openft.services.job_runtime import LeaseLost

        last_renewal = time.monotonic()
        while not self._stop.wait(self.poll_seconds):
            try:
                # Each heartbeat renews the lease; polling in between is the same call, cheap
                # enough to make cancel and pause take effect within about a second.
                status = JobStatus(self.runtime.heartbeat(self.job_id, self.generation, self.lease_seconds))
                last_renewal = time.monotonic()
            except LeaseLost:
                log.warning("lease on %s was taken over; this worker stops writing to it", self.job_id)
                self.lost.set()
                if self.on_status is not None:
                    self.on_status(JobStatus.QUEUED)
                return
            except Exception:  # a database hiccup: keep trying until the lease would lapse
                log.exception("heartbeat for %s failed", self.job_id)
                if time.monotonic() - last_renewal > self.lease_seconds:
                    log.warning(
                        "lease on %s lapsed (not renewed for %.0fs); another worker may take the job "
                        "over, so this worker stops writing to it",
                        self.job_id,
                        time.monotonic() - last_renewal,
                    )
                    self.lost.set()
                    return
                continue
            if status != self.status:
                self.status = status
                if self.on_status is not None:
                    self.on_status(status)

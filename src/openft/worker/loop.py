"""The worker loop: expire stale leases, claim a job, validate or train it, repeat."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading

from openft.worker.lease import LeaseKeeper
from openft.worker.retry import PatientRuntime
from openft.worker.runner import SubprocessLauncher, TrainingRun
from openft.worker.validation import TransformersTokenizerSeam, ValidationStopper, validate_job

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, services, *, worker_id: str | None = None, launcher=None, seam=None) -> None:
        self.services = services
        self.settings = services.settings
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.launcher = launcher or SubprocessLauncher()
        self.seam = seam or TransformersTokenizerSeam(self.settings)
        self.drain = threading.Event()
        self.runtime = PatientRuntime(services.runtime)

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: checkpoint the running job at its next step boundary, requeue it, exit."""

        def handler(signum, _frame) -> None:
            log.info("worker %s: %s received, draining", self.worker_id, signal.Signals(signum).name)
            self.drain.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run_once(self) -> bool:
        """Claim and handle one job; False when there was nothing to do."""
        runtime = self.runtime
        for job_id in runtime.expire_leases(self.settings.max_attempts):
            log.warning("job %s: its worker's lease expired", job_id)
        claim = runtime.claim(self.worker_id, self.settings.lease_seconds)
        if claim is None:
            return False
        log.info("worker %s: claimed %s for %s", self.worker_id, claim.job_id, claim.phase)
        if claim.phase == "validate":
            with LeaseKeeper(
                self.services.runtime,
                claim.job_id,
                claim.generation,
                lease_seconds=self.settings.lease_seconds,
                heartbeat_seconds=self.settings.heartbeat_seconds,
                # polled as often as a training run's, so a cancel stops validation within a poll
                poll_seconds=self.settings.poll_seconds,
            ) as keeper:
                try:
                    validate_job(
                        self.services,
                        claim,
                        self.seam,
                        runtime=runtime,
                        should_stop=ValidationStopper(keeper),
                    )
                except Exception as exc:
                    log.exception("job %s: validation crashed", claim.job_id)
                    runtime.fail(
                        claim.job_id,
                        claim.generation,
                        code="invalid_training_file",
                        message=f"The training file could not be validated: {exc}",
                        param="training_file",
                    )
        else:
            TrainingRun(
                self.services,
                claim,
                launcher=self.launcher,
                seam=self.seam,
                drain=self.drain,
                runtime=runtime,
            ).run()
        return True

    def run(self, *, burst: bool = False, max_jobs: int | None = None) -> int:
        """Work until drained; with ``burst`` stop when the queue is empty. Returns jobs handled."""
        handled = 0
        while not self.drain.is_set():
            if max_jobs is not None and handled >= max_jobs:
                break
            try:
                if self.run_once():
                    handled += 1
                    continue
            except Exception:
                # The database is away for longer than the retries: keep the worker alive and
                # try again; a job it held is recovered through its lease.
                log.exception("worker %s: could not handle a job; retrying after a pause", self.worker_id)
            if burst:
                break
            self.drain.wait(self.settings.poll_seconds)
        return handled

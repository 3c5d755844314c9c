"""The validation lane: claims jobs in ``validating_files`` and validates them, beside training.

Validation is CPU work that must never wait behind training (a bad file fails in seconds whatever
is training) and must never hold a training slot or a GPU. Every worker runs one lane in a thread
of its own; ``openft worker --validate-only`` runs nothing else (``openft api`` starts one so).
"""

from __future__ import annotations

import logging
import threading

from openft.worker.budget import JobBudget
from openft.worker.lease import LeaseKeeper
from openft.worker.validation import ValidationStopper, validate_job

log = logging.getLogger(__name__)


class ValidationLane:
    def __init__(self, services, worker_id: str, seam, *, runtime) -> None:
        self.services = services
        self.settings = services.settings
        self.worker_id = worker_id
        self.seam = seam
        self.runtime = runtime  # the worker's PatientRuntime: claims and writes retry through hiccups
        self._thread: threading.Thread | None = None

    def run_once(self) -> bool:
        """Claim and validate one job; False when none is waiting."""
        claim = self.runtime.claim_validation(self.worker_id, self.settings.lease_seconds)
        if claim is None:
            return False
        log.info("worker %s: validating %s", self.worker_id, claim.job_id)
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
                    runtime=self.runtime,
                    should_stop=ValidationStopper(keeper),
                )
            except Exception as exc:
                log.exception("job %s: validation crashed", claim.job_id)
                self.runtime.fail(
                    claim.job_id,
                    claim.generation,
                    code="invalid_training_file",
                    message=f"The training file could not be validated: {exc}",
                    param="training_file",
                )
        return True

    def run(self, stop: threading.Event, budget: JobBudget) -> None:
        """Validate until ``stop`` is set or the budget is spent; a job under way is finished first."""
        while not stop.is_set() and not budget.spent:
            try:
                if budget.claim_with(self.run_once):
                    continue
            except Exception:
                # The database is away for longer than the retries; a job we held comes back
                # through its lease.
                log.exception("worker %s: validation lane could not claim; retrying", self.worker_id)
            stop.wait(self.settings.poll_seconds)

    def start(self, stop: threading.Event, budget: JobBudget) -> ValidationLane:
        self._thread = threading.Thread(
            target=self.run, args=(stop, budget), name=f"validate-{self.worker_id}", daemon=True
        )
        self._thread.start()
        return self

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()

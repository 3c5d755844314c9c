"""The worker loop: recover lost jobs, validate in a lane of its own, train on free devices, repeat."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading

from openft.services.workers import CUDA, Device, RunningJob, WorkerInfo
from openft.worker.budget import JobBudget
from openft.worker.gpus import DevicePool, GpuInventory, NvidiaInventory, owned
from openft.worker.presence import Presence, describe_cpu
from openft.worker.retry import PatientRuntime
from openft.worker.runner import SubprocessLauncher, TrainingRun
from openft.worker.slots import TrainingSlots
from openft.worker.validation import TransformersTokenizerSeam
from openft.worker.validator import ValidationLane

log = logging.getLogger(__name__)


class Worker:
    """Owns a set of devices and runs a validation lane beside its training slots: one job per free
    GPU (a job holds ``n_devices`` of them), or one job at a time on a CPU worker.

    ``gpus`` is ``--gpus`` (default ``settings.gpus``); ``inventory`` is the seam that lists this
    machine's GPUs. ``validate_only`` runs the lane alone (``openft api``'s validator). ``runtime``
    defaults to the services' runtime with retries (``PatientRuntime``).
    """

    def __init__(
        self,
        services,
        *,
        worker_id: str | None = None,
        launcher=None,
        seam=None,
        gpus: str | None = None,
        inventory: GpuInventory | None = None,
        validate_only: bool = False,
        runtime=None,
    ) -> None:
        self.services = services
        self.settings = services.settings
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.launcher = launcher or SubprocessLauncher()
        self.seam = seam or TransformersTokenizerSeam(self.settings)
        self.drain = threading.Event()
        self.runtime = runtime or PatientRuntime(services.runtime)
        self.validate_only = validate_only
        detected = [] if validate_only else (inventory or NvidiaInventory()).detect()
        self.pool = DevicePool(owned(gpus or self.settings.gpus, detected), machine_has_gpus=bool(detected))
        self.validator = ValidationLane(services, self.worker_id, self.seam, runtime=self.runtime)

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: checkpoint the running jobs at their next step boundary, requeue them, exit."""

        def handler(signum, _frame) -> None:
            log.info("worker %s: %s received, draining", self.worker_id, signal.Signals(signum).name)
            self.drain.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def describe(self) -> WorkerInfo:
        """This worker as the registry records it."""
        host, pid = socket.gethostname(), os.getpid()
        if self.validate_only:
            return WorkerInfo(self.worker_id, host, pid, devices=(), slots=0)
        gpus = tuple(Device(CUDA, g.name, g.index, g.memory_bytes) for g in self.pool.gpus)
        devices = gpus or (describe_cpu(),)
        running = tuple(RunningJob(job_id, held) for job_id, held in self.pool.held().items())
        return WorkerInfo(self.worker_id, host, pid, devices=devices, slots=self.pool.slots, running=running)

    def run(self, *, burst: bool = False, max_jobs: int | None = None) -> int:
        """Work until drained. With ``burst``, validate in this thread and stop once nothing is left
        to claim and nothing runs (tests need no sleeps). Returns the jobs claimed (validations and
        training attempts), at most ``max_jobs``; jobs still running are waited for."""
        budget = JobBudget(max_jobs)
        stop_lane = threading.Event()
        with Presence(
            self.services.workers, self.describe, heartbeat_seconds=self.settings.heartbeat_seconds
        ) as presence:
            slots = TrainingSlots(
                self.pool, claim=self._claim_training, run=self._train, on_change=presence.touch
            )
            if not burst:
                self.validator.start(stop_lane, budget)
            try:
                while not self.drain.is_set() and not budget.spent:
                    # Read before claiming: a run that ends during the claim may have requeued its job.
                    idle = slots.running() == 0
                    try:
                        if self._claim_one(burst, budget, slots):
                            continue
                    except Exception:
                        # The database is away for longer than the retries: keep the worker alive
                        # and try again; a job it held is recovered through its lease.
                        log.exception(
                            "worker %s: could not claim a job; retrying after a pause", self.worker_id
                        )
                    if burst and idle:
                        break
                    slots.wait(self.settings.poll_seconds)
            finally:
                stop_lane.set()
                slots.join()
                self.validator.join()
        return budget.used

    def _claim_one(self, burst: bool, budget: JobBudget, slots: TrainingSlots) -> bool:
        for job_id in self.runtime.expire_leases(self.settings.max_attempts):
            log.warning("job %s: its worker's lease expired", job_id)
        if burst and budget.claim_with(self.validator.run_once):
            return True
        return not self.validate_only and budget.claim_with(slots.claim)

    def _claim_training(self, **fits):
        claim = self.runtime.claim_training(self.worker_id, self.settings.lease_seconds, **fits)
        if claim is not None:
            log.info("worker %s: claimed %s for training", self.worker_id, claim.job_id)
        return claim

    def _train(self, claim, cuda_visible_devices: str | None) -> None:
        TrainingRun(
            self.services,
            claim,
            launcher=self.launcher,
            seam=self.seam,
            drain=self.drain,
            runtime=self.runtime,
            cuda_visible_devices=cuda_visible_devices,
        ).run()

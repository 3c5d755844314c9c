"""The training slots: the jobs a worker trains at once, each on the GPUs it was given.

Each claimed job runs in a thread of its own that starts its child, keeps its lease (the run's own
``LeaseKeeper``) and records what it reports, exactly as a single job always did; the thread that
starts a child also waits for it, which ``PR_SET_PDEATHSIG`` needs (see ``training/launch.py``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from openft.worker.gpus import DevicePool

log = logging.getLogger(__name__)


def devices_needed(claim) -> int:
    """The job's ``n_devices`` as validation resolved it (1 for a job validated before it existed)."""
    value = claim.job.hyperparameters.get("n_devices", 1)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1


class TrainingSlots:
    def __init__(
        self,
        pool: DevicePool,
        *,
        claim: Callable[..., object],
        run: Callable[[object, str | None], None],
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.pool = pool
        self._claim = claim  # runtime.claim_training bound to the worker's id and lease
        self._run = run  # runs one claimed job to its end: (claim, CUDA_VISIBLE_DEVICES or None)
        self.on_change = on_change
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self._changed = threading.Event()

    def running(self) -> int:
        with self._lock:
            return len(self._threads)

    def claim(self) -> bool:
        """Claim a job that fits the free devices and start it; False when none was claimed."""
        free = self.pool.free()
        if free == 0:
            return False
        if self.pool.cuda:
            claim = self._claim(free_devices=free, total_devices=len(self.pool.gpus))
        else:
            claim = self._claim()
        if claim is None:
            return False
        devices = self.pool.take(claim.job_id, devices_needed(claim) if self.pool.cuda else 0)
        if devices:
            log.info("job %s: training on GPU %s", claim.job_id, ",".join(map(str, devices)))
        thread = threading.Thread(
            target=self._train, args=(claim, devices), name=f"train-{claim.job_id}", daemon=True
        )
        with self._lock:
            self._threads[claim.job_id] = thread
        thread.start()
        self.on_change()
        return True

    def _train(self, claim, devices: tuple[int, ...]) -> None:
        try:
            self._run(claim, self.pool.cuda_visible_devices(devices))
        except Exception:
            # The database is away for longer than the retries: the job comes back through its lease.
            log.exception("job %s: the training run failed outside its child", claim.job_id)
        finally:
            self.pool.give_back(claim.job_id)
            with self._lock:
                self._threads.pop(claim.job_id, None)
            self._changed.set()
            self.on_change()

    def wait(self, timeout: float) -> None:
        """Until a run ends or ``timeout`` passes."""
        self._changed.wait(timeout)
        self._changed.clear()

    def join(self) -> None:
        """Until every run has ended (after a drain: once each child has checkpointed and exited)."""
        while True:
            with self._lock:
                threads = list(self._threads.values())
            if not threads:
                return
            for thread in threads:
                thread.join()

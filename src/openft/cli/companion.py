"""The worker process that runs beside the API: ``openft serve``'s worker, ``openft api``'s validator.

It lives exactly as long as the API process, however that ends:

- SIGTERM or Ctrl-C: uvicorn shuts down, then the worker is sent SIGTERM and waited for while it
  drains (its jobs checkpoint and go back to the queue), as ``openft worker`` does, and the process
  exits 0. The signal handlers of this module never raise: a signal that arrives at an arbitrary
  point (an import, the database migration, uvicorn's start-up) only sets ``stop``, which the API
  run checks before it starts serving and which tells a serving uvicorn to exit. uvicorn replaces
  them while it runs and, once done, restores them and re-raises what it caught.
- SIGKILL, or any other death: the kernel sends the worker SIGTERM (``PR_SET_PDEATHSIG``), so it
  drains and exits on its own instead of living on, reparented, and claiming jobs.
- A second SIGTERM or Ctrl-C while waiting, or a drain longer than ``DRAIN_SECONDS``: the worker is
  killed (its training children die with it; their jobs come back through their leases).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

from openft.training.launch import die_with_parent
from openft.worker.runner import STOP_GRACE_SECONDS

log = logging.getLogger(__name__)

# A drain waits for each child's next step boundary, which the worker bounds by STOP_GRACE_SECONDS.
DRAIN_SECONDS = STOP_GRACE_SECONDS + 60.0


def run_beside_worker(args: Sequence[str], run: Callable[[threading.Event], None]) -> None:
    """Run ``openft worker ARGS`` while ``run(stop)`` (the API) runs; SIGTERM or Ctrl-C sets
    ``stop``, which ``run`` must honour (not start serving, or shut uvicorn down), then the worker
    drains. A second signal cuts the drain short."""
    stop, hurry, draining = threading.Event(), threading.Event(), threading.Event()

    def handler(signum, _frame) -> None:
        if draining.is_set():
            hurry.set()
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "openft.cli.main", "worker", *args],
        stdin=subprocess.DEVNULL,
        preexec_fn=die_with_parent(signal.SIGTERM),
    )
    threading.Thread(target=_watch, args=(proc, draining), name="worker-watch", daemon=True).start()
    try:
        if not stop.is_set():
            run(stop)
        if stop.is_set():
            log.info("stopping: the API is down; draining its worker")
    finally:
        draining.set()
        try:
            stop_worker(proc, hurry)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _watch(proc: subprocess.Popen, stopping: threading.Event) -> None:
    """A worker that exits while the API serves would leave jobs unvalidated and untrained: say so."""
    code = proc.wait()
    if not stopping.is_set():
        log.error(
            "the worker (pid %d) exited with code %s; no job will be validated or trained until openft is "
            "restarted. Its log is above.",
            proc.pid,
            code,
        )


def stop_worker(proc: subprocess.Popen, hurry: threading.Event | None = None) -> None:
    """SIGTERM the worker and wait while it drains; kill it when ``hurry`` is set (a second signal)
    or after DRAIN_SECONDS."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    hurry = hurry or threading.Event()
    deadline = time.monotonic() + DRAIN_SECONDS
    while proc.poll() is None:
        if hurry.is_set():
            log.warning("stopping again: killing the worker without waiting for its drain")
            break
        if time.monotonic() > deadline:
            log.warning("the worker did not drain in %ss; killing it", DRAIN_SECONDS)
            break
        hurry.wait(0.1)
    else:
        return
    proc.kill()
    proc.wait()

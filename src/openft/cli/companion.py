"""The worker process that runs beside the API: ``openft serve``'s worker, ``openft api``'s validator.

It lives exactly as long as the API process, however that ends:

- SIGTERM or Ctrl-C: uvicorn shuts down, then the worker is sent SIGTERM and waited for while it
  drains (its jobs checkpoint and go back to the queue), as ``openft worker`` does. uvicorn re-raises
  the SIGTERM it caught once it is done; with Python's default handler that kills the process
  before any ``finally`` runs, so a handler of ours turns it into an exception first.
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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from openft.training.launch import die_with_parent
from openft.worker.runner import STOP_GRACE_SECONDS

log = logging.getLogger(__name__)

# A drain waits for each child's next step boundary, which the worker bounds by STOP_GRACE_SECONDS.
DRAIN_SECONDS = STOP_GRACE_SECONDS + 60.0


class Stopping(Exception):
    """SIGTERM reached this process."""


def _stopping(signum, _frame) -> None:
    raise Stopping(signal.Signals(signum).name)


@contextmanager
def companion_worker(args: Sequence[str]) -> Iterator[subprocess.Popen]:
    """Run ``openft worker ARGS`` for the duration of the block; SIGTERM or Ctrl-C ends it quietly."""
    previous = signal.signal(signal.SIGTERM, _stopping)
    proc = subprocess.Popen(
        [sys.executable, "-m", "openft.cli.main", "worker", *args],
        stdin=subprocess.DEVNULL,
        preexec_fn=die_with_parent(signal.SIGTERM),
    )
    stopping = threading.Event()
    threading.Thread(target=_watch, args=(proc, stopping), name="worker-watch", daemon=True).start()
    try:
        yield proc
    except (Stopping, KeyboardInterrupt):
        # uvicorn has shut down; what remains of stopping is the worker's drain, and then exit 0
        log.info("stopping: the API is down; draining its worker")
    finally:
        stopping.set()
        try:
            stop(proc)
        finally:
            signal.signal(signal.SIGTERM, previous)


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


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the worker and wait while it drains; kill it on a second signal or after DRAIN_SECONDS."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=DRAIN_SECONDS)
        return
    except subprocess.TimeoutExpired:
        log.warning("the worker did not drain in %ss; killing it", DRAIN_SECONDS)
    except (Stopping, KeyboardInterrupt):
        log.warning("stopping again: killing the worker without waiting for its drain")
    proc.kill()
    proc.wait()

"""How to start the training child: its argv, its environment, and its tie to the worker (no torch)."""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

# The fence file a worker writes into the job's output directory before starting a child.
LEASE_FILE = "LEASE"
# The worker's pid, so the child can notice at a step boundary that it was orphaned.
PARENT_PID_ENV = "OPENFT_PARENT_PID"
# How a child that stopped writing exits: its worker is gone, or another worker rewrote the fence file.
EXIT_ORPHANED = 70
EXIT_FENCED = 71
_PR_SET_PDEATHSIG = 1

TCMALLOC = "libtcmalloc_minimal.so.4"
_LIBRARY_DIRS = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
)


# MKL and OpenMP may run a kernel on fewer threads than asked when the machine is busy, which
# changes the order of floating-point sums: a seeded run would then differ with the load. Pinning
# the thread count keeps a CPU run (and a resumed one) reproducible bit for bit.
REPRODUCIBLE_THREADING = {"MKL_DYNAMIC": "FALSE", "OMP_DYNAMIC": "FALSE"}


def find_tcmalloc() -> str | None:
    """tcmalloc's path, if installed (Debian: libtcmalloc-minimal4); training is ~1.3x faster with it."""
    for directory in _LIBRARY_DIRS:
        matches = sorted(glob.glob(os.path.join(directory, TCMALLOC)))
        if matches:
            return matches[0]
    found = ctypes.util.find_library("tcmalloc_minimal")
    return found if found and os.path.isabs(found) else None


def child_command(spec_path: str | Path) -> tuple[list[str], dict[str, str]]:
    """argv and env for ``python -m openft.training.child SPEC_PATH``, preloading tcmalloc when found."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(REPRODUCIBLE_THREADING)
    env[PARENT_PID_ENV] = str(os.getpid())
    tcmalloc = find_tcmalloc()
    if tcmalloc and tcmalloc not in env.get("LD_PRELOAD", ""):
        env["LD_PRELOAD"] = ":".join(p for p in (tcmalloc, env.get("LD_PRELOAD", "")) if p)
    return [sys.executable, "-m", "openft.training.child", str(spec_path)], env


def die_with_parent(signum: int = signal.SIGKILL) -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child get ``signum`` (SIGKILL) when the worker dies (Linux
    ``PR_SET_PDEATHSIG``). ``openft serve`` starts its worker with SIGTERM, so the worker drains.

    Without it, a SIGKILLed worker leaves its child training and checkpointing into the job's
    directory while another worker resumes the same job there. Caveat of the kernel API: the
    signal fires when the *thread* that started the child exits, so start it from a thread that
    outlives it (the worker does: the same thread waits for the child).
    """
    parent = os.getpid()
    prctl = None
    if sys.platform.startswith("linux"):
        # Resolved here, before the fork: between fork and exec only async-signal-safe work is safe
        # (other threads may hold the import lock or allocator locks in the copied address space).
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    on_death = int(signum)

    def preexec() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, on_death, 0, 0, 0)
        if os.getppid() != parent:  # the worker died before prctl took effect
            os._exit(1)

    return preexec

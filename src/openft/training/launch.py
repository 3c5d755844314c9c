"""How to start the training child: its argv, its environment, and its tie to the worker (no torch).

One process, or, for a job on ``n_devices > 1`` devices, ``torchrun --standalone --nproc-per-node N``
starting N ranks of the same child. The worker then talks to torchrun's agent: the agent forwards the
worker's signals (SIGUSR1 pause or drain, SIGTERM cancel) to every rank, stops the survivors when a
rank dies (``--max-restarts 0``: the job is requeued instead), and dies with the worker
(``PR_SET_PDEATHSIG``). Its ranks run in sessions of their own, so each rank ties itself to the agent
the same way (``die_with_agent``): no rank outlives its worker.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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


# Signals torchrun's agent forwards to every rank: its defaults, plus SIGUSR1 (pause, drain), which
# would otherwise kill the agent. Set through torchrun's PET_* variables rather than flags so that a
# torch without these options ignores them instead of refusing to start.
AGENT_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
# How long the agent lets the ranks reach a step boundary after a signal before it kills them.
AGENT_SHUTDOWN_SECONDS = 120


def child_command(
    spec_path: str | Path, n_devices: int = 1, *, stop_grace_seconds: float = AGENT_SHUTDOWN_SECONDS
) -> tuple[list[str], dict[str, str]]:
    """argv and env for ``python -m openft.training.child SPEC_PATH``, preloading tcmalloc when found;
    for ``n_devices > 1`` the same child under ``torchrun --standalone --nproc-per-node N`` (a free
    port on this machine for the rendezvous, no restarts: a rank that dies fails the attempt)."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(REPRODUCIBLE_THREADING)
    env[PARENT_PID_ENV] = str(os.getpid())
    tcmalloc = find_tcmalloc()
    if tcmalloc and tcmalloc not in env.get("LD_PRELOAD", ""):
        env["LD_PRELOAD"] = ":".join(p for p in (tcmalloc, env.get("LD_PRELOAD", "")) if p)
    child = ["-m", "openft.training.child", str(spec_path)]
    if n_devices <= 1:
        return [sys.executable, *child], env
    env["PET_SIGNALS_TO_HANDLE"] = AGENT_SIGNALS
    env["PET_SHUTDOWN_TIMEOUT"] = str(int(stop_grace_seconds))
    # torchrun's own default when unset; the child sets its thread count from the cores it may use
    env.setdefault("OMP_NUM_THREADS", "1")
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n_devices)]
    torchrun += ["--max-restarts", "0"]
    return [sys.executable, *torchrun, *child], env


@dataclass(frozen=True)
class Ranks:
    """Where this process stands in a torchrun launch (torchrun's environment variables)."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int


def launched_ranks(environ: Mapping[str, str] | None = None) -> Ranks | None:
    """This process's ranks when torchrun started it; None for a plain child."""
    env = os.environ if environ is None else environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    world = int(env["WORLD_SIZE"])
    return Ranks(
        rank=int(env["RANK"]),
        world_size=world,
        local_rank=int(env.get("LOCAL_RANK", env["RANK"])),
        local_world_size=int(env.get("LOCAL_WORLD_SIZE", world)),
    )


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


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process from ``/proc``; None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw.rsplit(")", 1)[1].split()  # the name in parentheses may hold spaces
    return fields[0], int(fields[1])


def die_with_agent(worker_pid: int | None) -> int | None:
    """For a rank that torchrun started: get SIGKILL when the agent dies (``PR_SET_PDEATHSIG``; the
    agent starts each rank in a session of its own and, SIGKILLed with its worker, cannot stop them),
    and exit at once if the agent is already gone. Returns the agent's pid (the parent that
    ``Ownership`` watches), or None off Linux.

    The agent is this process's parent, and the worker (``worker_pid``, when known) the agent's
    parent: a parent that is not the worker's child means the agent died before ``prctl`` ran and
    this process was adopted.
    """
    if not sys.platform.startswith("linux"):
        return None
    agent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    stat = _proc_stat(agent)
    if os.getppid() != agent or stat is None or (worker_pid is not None and stat[1] != worker_pid):
        print("training rank: torchrun's agent is gone; exiting", file=sys.stderr, flush=True)
        os._exit(1)
    return agent


def ranks_alive(agent_pid: int) -> int:
    """How many of the agent's children (the ranks of this machine, this one included) still run;
    exited ones waiting to be reaped do not count."""
    alive = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None and stat[1] == agent_pid and stat[0] not in ("Z", "X"):
                alive += 1
    return alive


def group_lost(agent_pid: int | None, local_world_size: int, wait_seconds: float) -> bool:
    """After an exception in a rank: did the group break because another rank (or the agent) died?

    A rank killed mid-step makes the others fail inside a collective ("Connection closed by peer"):
    that is a lost child, for the worker to requeue, not an error of the job. A rank that fails on
    its own keeps its peers alive (they wait in their next collective), so after ``wait_seconds``
    with every rank still there the exception is the job's own.
    """
    if agent_pid is None:
        return False
    deadline = time.monotonic() + wait_seconds
    while True:
        if os.getppid() != agent_pid or ranks_alive(agent_pid) < local_world_size:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)

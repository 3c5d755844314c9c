"""The training child process: ``python -m openft.training.child SPEC_PATH``.

Reads the spec, runs ``train`` and prints the JSON-lines protocol of ``spec.py`` on stdout (one
flushed line each; logs and warnings go to stderr). SIGUSR1 asks for a pause (checkpoint at the
next step boundary, then ``paused``), SIGTERM for a cancel (``cancelled``); both exit 0. A failure
becomes one ``error`` line with a code from ``spec.py`` and a non-zero exit.

Before every line and at every step boundary the child checks that it still owns the job: its
worker is alive (``OPENFT_PARENT_PID``, a fallback for ``PR_SET_PDEATHSIG``) and the job's fence
file (``LEASE_FILE`` in the output directory, rewritten by each worker that claims the job) still
holds the token it started with. If not, it exits at once with ``EXIT_ORPHANED`` or
``EXIT_FENCED`` and writes nothing more: another worker may be resuming the job in that directory.

Started by torchrun (``n_devices > 1``), the child is one rank of several: it dies with torchrun's
agent (which dies with the worker) and watches the agent as its parent; rank 0 alone writes protocol
lines, except that any rank reports its own error. A rank that fails because another one died (a
collective broke) writes nothing and exits with ``EXIT_GROUP_LOST``: the worker requeues the job as
it does for any training process that died.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any, TextIO

from openft.training.launch import (
    EXIT_FENCED,
    EXIT_ORPHANED,
    LEASE_FILE,
    PARENT_PID_ENV,
    die_with_agent,
    group_lost,
    launched_ranks,
)
from openft.training.spec import (
    ERROR_MODEL_LOAD,
    ERROR_NAN_LOSS,
    ERROR_OUT_OF_MEMORY,
    ERROR_TRAINING,
    TrainingSpec,
)

EXIT_GROUP_LOST = 72
# After an exception, how long a rank waits to see whether a peer died (then it was not the cause).
GROUP_LOSS_WAIT_SECONDS = 3.0


class Ownership:
    """Whether this child may still write: its worker lives and the job's fence file is unchanged."""

    def __init__(self, parent_pid: int | None, lease_path: Path | None) -> None:
        self.parent_pid = parent_pid
        self.lease_path = lease_path
        self.token = self._read_token()

    @classmethod
    def from_env(cls, output_dir: str | Path, parent_pid: int | None = None) -> Ownership:
        """``parent_pid``: the parent to watch when it is not the worker (a rank's torchrun agent)."""
        raw = os.environ.get(PARENT_PID_ENV)
        if parent_pid is None and raw:
            parent_pid = int(raw)
        return cls(parent_pid, Path(output_dir) / LEASE_FILE)

    def _read_token(self) -> str | None:
        if self.lease_path is None:
            return None
        try:
            return self.lease_path.read_text(encoding="utf-8")
        except FileNotFoundError:  # started by hand or by a test: no worker fences it
            return None

    def check(self) -> None:
        """Exit at once, writing nothing, if another worker may own the job now."""
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            print(f"training child: worker {self.parent_pid} is gone; exiting", file=sys.stderr, flush=True)
            os._exit(EXIT_ORPHANED)
        if self.token is not None and self._read_token() != self.token:
            print("training child: another worker took the job over; exiting", file=sys.stderr, flush=True)
            os._exit(EXIT_FENCED)


class JsonLinesReporter:
    """Writes protocol lines to a stream and records stop requests set by signal handlers."""

    def __init__(self, stream: TextIO, ownership: Ownership | None = None) -> None:
        self.stream = stream
        self.requested: str | None = None
        self.ownership = ownership
        self.last_step = 0  # the last step reported, for error messages

    def emit(self, line: dict[str, Any]) -> None:
        # Checked before each line: a metrics line precedes every checkpoint the recipe writes.
        if self.ownership is not None:
            self.ownership.check()
        if line.get("type") == "metrics":
            self.last_step = int(line["step"])
        self.stream.write(json.dumps(line) + "\n")
        self.stream.flush()

    def stop_requested(self):  # -> Literal["pause", "cancel"] | None
        if self.ownership is not None:
            self.ownership.check()
        return self.requested

    def request(self, kind: str) -> None:
        # cancel wins over pause: a job cancelled while pausing should not leave a checkpoint behind
        if self.requested != "cancel":
            self.requested = kind


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, Python's MemoryError, or the CPU allocator's refusal (a RuntimeError)."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


def error_code(exc: BaseException) -> str:
    from openft.training.models import ModelLoadError
    from openft.training.recipe import NonFiniteLossError

    if is_out_of_memory(exc):
        return ERROR_OUT_OF_MEMORY
    if isinstance(exc, NonFiniteLossError):
        return ERROR_NAN_LOSS
    if isinstance(exc, ModelLoadError):
        return ERROR_MODEL_LOAD
    return ERROR_TRAINING


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m openft.training.child SPEC_PATH", file=sys.stderr)
        return 2
    # stdout carries the protocol only; libraries' chatter goes to stderr
    protocol = sys.stdout
    sys.stdout = sys.stderr
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    warnings.simplefilter("default")
    ranks = launched_ranks()
    agent = None
    if ranks is not None and ranks.world_size > 1:
        raw = os.environ.get(PARENT_PID_ENV)
        agent = die_with_agent(int(raw) if raw else None)
    reporter = JsonLinesReporter(protocol)
    signal.signal(signal.SIGUSR1, lambda *_: reporter.request("pause"))
    signal.signal(signal.SIGTERM, lambda *_: reporter.request("cancel"))
    spec: TrainingSpec | None = None
    try:
        spec = TrainingSpec.from_json(Path(args[0]).read_text(encoding="utf-8"))
        reporter.ownership = Ownership.from_env(spec.output_dir, parent_pid=agent)
        reporter.ownership.check()
        if spec.method == "reinforcement":
            from openft.training.reinforcement import train
        else:
            from openft.training.recipe import train

        train(spec, reporter)
    except BaseException as exc:  # noqa: BLE001 - every failure must become an error line
        traceback.print_exc(file=sys.stderr)
        if ranks is not None and group_lost(agent, ranks.local_world_size, GROUP_LOSS_WAIT_SECONDS):
            print(
                "training rank: another rank died; leaving the error to the worker",
                file=sys.stderr,
                flush=True,
            )
            # At once: the broken group's threads may still hold tensors that a normal interpreter
            # shutdown would free without the GIL (an abort).
            os._exit(EXIT_GROUP_LOST)
        code = ERROR_TRAINING if isinstance(exc, KeyboardInterrupt) else error_code(exc)
        message = f"{type(exc).__name__}: {exc}"
        if code == ERROR_OUT_OF_MEMORY and spec is not None:
            message = out_of_memory_message(spec, exc, reporter.last_step)
        reporter.emit({"type": "error", "code": code, "message": message})
        if ranks is not None:
            leave_now(protocol, 1)
        return 1
    if ranks is not None:
        leave_now(protocol, 0)
    return 0


def leave_now(protocol: TextIO, code: int) -> None:
    """A rank's exit once its work is written: without the interpreter's teardown, in which a
    process-group thread left joinable occasionally aborts the process ("terminate called without
    an active exception", seen under load with gloo) and would turn a finished run into a failed
    one. Everything the rank wrote is flushed or closed (checkpoints are fsynced) by then."""
    protocol.flush()
    sys.stderr.flush()
    os._exit(code)


def out_of_memory_message(spec: TrainingSpec, exc: BaseException, last_step: int) -> str:
    """Free what the failed step held (its frames keep the model and activations alive), then say
    what ran out and what would fit."""
    traceback.clear_frames(exc.__traceback__)
    try:
        from openft.training import devices

        device = devices.select(spec)
        device.release_memory()
        return devices.out_of_memory_message(spec, device, last_step + 1)
    except Exception as describe_error:  # noqa: BLE001 - the original error must still be reported
        return f"{type(exc).__name__}: {exc} (and describing it failed: {describe_error})"


if __name__ == "__main__":
    sys.exit(main())

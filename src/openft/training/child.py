"""The training child process: ``python -m openft.training.child SPEC_PATH``.

Reads the spec, runs ``train`` and prints the JSON-lines protocol of ``spec.py`` on stdout (one
flushed line each; logs and warnings go to stderr). SIGUSR1 asks for a pause (checkpoint at the
next step boundary, then ``paused``), SIGTERM for a cancel (``cancelled``); both exit 0. A failure
becomes one ``error`` line with a code from ``spec.py`` and a non-zero exit.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any, TextIO

from openft.training.spec import (
    ERROR_MODEL_LOAD,
    ERROR_NAN_LOSS,
    ERROR_OUT_OF_MEMORY,
    ERROR_TRAINING,
    TrainingSpec,
)


class JsonLinesReporter:
    """Writes protocol lines to a stream and records stop requests set by signal handlers."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.requested: str | None = None

    def emit(self, line: dict[str, Any]) -> None:
        self.stream.write(json.dumps(line) + "\n")
        self.stream.flush()

    def stop_requested(self):  # -> Literal["pause", "cancel"] | None
        return self.requested

    def request(self, kind: str) -> None:
        # cancel wins over pause: a job cancelled while pausing should not leave a checkpoint behind
        if self.requested != "cancel":
            self.requested = kind


def error_code(exc: BaseException) -> str:
    import torch

    from openft.training.models import ModelLoadError
    from openft.training.recipe import NonFiniteLossError

    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
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
    reporter = JsonLinesReporter(protocol)
    signal.signal(signal.SIGUSR1, lambda *_: reporter.request("pause"))
    signal.signal(signal.SIGTERM, lambda *_: reporter.request("cancel"))
    try:
        spec = TrainingSpec.from_json(Path(args[0]).read_text(encoding="utf-8"))
        from openft.training.recipe import train

        train(spec, reporter)
    except BaseException as exc:  # noqa: BLE001 - every failure must become an error line
        traceback.print_exc(file=sys.stderr)
        code = ERROR_TRAINING if isinstance(exc, KeyboardInterrupt) else error_code(exc)
        reporter.emit({"type": "error", "code": code, "message": f"{type(exc).__name__}: {exc}"})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Checkpoints on disk: atomic writes under ``checkpoints/step-N/``, discovery for resume, and pruning.

A checkpoint holds the servable weights (``adapter/`` or ``model/`` plus tokenizer) and
``state.pt`` (optimizer, scheduler, RNG states, data position, metrics so far). It is written into
a temporary directory, every file fsynced, renamed into place, and the parent fsynced; the
``COMPLETE`` marker is written last, so a directory without it is torn and is ignored.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

COMPLETE_MARKER = "COMPLETE"
STATE_FILE = "state.pt"
_NAME = re.compile(r"^step-(\d+)$")


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int
    epoch_end: bool  # an epoch-end checkpoint (kept, and reported as an OpenAI checkpoint)

    def load_state(self) -> dict[str, Any]:
        # On the CPU whichever device saved it: the optimizer moves its state to its parameters'
        # device on load, and RNG states are CPU tensors; a GPU checkpoint resumes on a CPU worker.
        return torch.load(self.path / STATE_FILE, weights_only=False, map_location="cpu")


def _fsync_tree(root: Path) -> None:
    for directory, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(directory, name), "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(Path(directory))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    """Delete a checkpoint so that a crash midway cannot leave a half-deleted ``step-N`` that still
    looks complete: rename it to a temporary name first (``prune`` sweeps those), then remove it."""
    doomed = path.with_name(f".tmp-step-removed-{path.name}-{os.getpid()}")
    try:
        os.rename(path, doomed)
    except FileNotFoundError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


def save(
    root: Path, step: int, epoch_end: bool, state: dict[str, Any], write_weights: Callable[[Path], Any]
) -> Checkpoint:
    """Write checkpoint ``step`` atomically; ``write_weights(dir)`` writes the servable weights into dir."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    temp = root / f".tmp-step-{step}-{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir()
    write_weights(temp)
    torch.save(state, temp / STATE_FILE)
    (temp / COMPLETE_MARKER).write_text(json.dumps({"step": step, "epoch_end": epoch_end}))
    _fsync_tree(temp)
    if final.exists():
        # The same step saved again by a later run (a step repeated after a resume).
        _remove(final)
    os.rename(temp, final)
    _fsync_dir(root)
    return Checkpoint(final, step, epoch_end)


def list_complete(root: Path) -> list[Checkpoint]:
    """Complete checkpoints, oldest first; torn ones (no marker) and temp directories are skipped."""
    found = []
    if not root.is_dir():
        return found
    for child in root.iterdir():
        match = _NAME.match(child.name)
        marker = child / COMPLETE_MARKER
        if not (match and marker.is_file() and (child / STATE_FILE).is_file()):
            continue
        try:
            info = json.loads(marker.read_text())
        except (OSError, ValueError):
            continue
        found.append(Checkpoint(child, int(match.group(1)), bool(info.get("epoch_end"))))
    return sorted(found, key=lambda c: c.step)


def latest(root: Path) -> Checkpoint | None:
    complete = list_complete(root)
    return complete[-1] if complete else None


def prune(root: Path, keep_epoch_checkpoints: int) -> None:
    """Keep the last ``keep_epoch_checkpoints`` epoch checkpoints and the newest other one if newer."""
    complete = list_complete(root)
    epochs = [c for c in complete if c.epoch_end]
    keep = {c.path for c in epochs[-keep_epoch_checkpoints:]} if keep_epoch_checkpoints > 0 else set()
    others = [c for c in complete if not c.epoch_end]
    if others and (not epochs or others[-1].step > epochs[-1].step):
        keep.add(others[-1].path)
    for checkpoint in complete:
        if checkpoint.path not in keep:
            _remove(checkpoint.path)
    for child in root.iterdir():
        if child.name.startswith(".tmp-step-") and child.is_dir():
            shutil.rmtree(child, ignore_errors=True)

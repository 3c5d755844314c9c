"""Moves a training job's trees between this machine and object storage: each complete checkpoint
and the final weights are published as training writes them, and a machine without the job's newest
checkpoint fetches it before the training process starts, which then resumes from it unchanged.

With local storage every method is a no-op: training writes in place, on the shared directory.
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from openft.store.artifacts import Artifacts

log = logging.getLogger(__name__)

# training.checkpoints' COMPLETE_MARKER and STATE_FILE (that module imports torch)
COMPLETE_MARKER = "COMPLETE"
STATE_FILE = "state.pt"
_STEP = re.compile(r"^step-(\d+)$")
T = TypeVar("T")


def local_checkpoints(out: Path) -> dict[int, Path]:
    """The complete checkpoints in a job's output directory, by step."""
    found = {}
    root = out / "checkpoints"
    if root.is_dir():
        for child in root.iterdir():
            match = _STEP.match(child.name)
            if match and (child / COMPLETE_MARKER).is_file() and (child / STATE_FILE).is_file():
                found[int(match.group(1))] = child
    return found


class ArtifactSync:
    """One training attempt's side of the store. ``fenced()`` raises when this worker's lease is
    lost: it runs just before a tree's manifest is written, so a worker that was taken over never
    completes a tree. ``referenced()`` lists the keys the database names for the job (kept when
    checkpoints are pruned)."""

    def __init__(
        self,
        artifacts: Artifacts,
        out: Path,
        job_id: str,
        *,
        fenced: Callable[[], object],
        referenced: Callable[[], set[str]],
        poll_seconds: float,
    ) -> None:
        self.artifacts = artifacts
        self.out = out
        self.job_id = job_id
        self.fenced = fenced
        self.referenced = referenced
        self.poll_seconds = poll_seconds
        self.published: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def remote(self) -> bool:
        return self.artifacts.remote

    def key(self, local: Path) -> str:
        return self.artifacts.key_for(local)

    # -- before the training process starts ------------------------------------------------------

    def restore(self) -> int | None:
        """Fetch the store's newest checkpoint unless this machine has one as new; return its step."""
        if not self.remote:
            return None
        latest = self.artifacts.latest_checkpoint(self.job_id)
        local = local_checkpoints(self.out)
        if latest is None or (local and max(local) >= latest[0]):
            return None
        step, key = latest
        dest = self.out / "checkpoints" / f"step-{step}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(dest, ignore_errors=True)  # torn (no marker): the fence already removed most
        self.artifacts.restore(key, dest)
        self.published.add(step)
        log.info("job %s: fetched the checkpoint at step %d from the store", self.job_id, step)
        return step

    # -- while it runs ---------------------------------------------------------------------------

    def publish_checkpoint(self, path: Path, register: Callable[[str], T] | None = None) -> T | None:
        """Publish one complete checkpoint (once), then ``register(key)`` (the database names it),
        then prune the store's obsolete ones, all under one lock: a prune in between would see the
        checkpoint neither named nor newest and delete it. Returns what ``register`` returned."""
        key = self.key(path)
        step = int(path.name.removeprefix("step-"))
        with self._lock:
            if self.remote and step not in self.published:
                self.artifacts.publish(path, key, before_commit=self.fenced)
                self.published.add(step)
            registered = register(key) if register is not None else None
            if self.remote:
                self.artifacts.prune_checkpoints(self.job_id, self.referenced())
        return registered

    def publish_newest(self) -> None:
        """Publish the newest complete local checkpoint if the store lacks it (older ones are no
        use to a resume). One that training prunes meanwhile is skipped: a newer one exists."""
        local = local_checkpoints(self.out)
        if not self.remote or not local or max(local) in self.published:
            return
        try:
            self.publish_checkpoint(local[max(local)])
        except FileNotFoundError:
            log.info("job %s: a checkpoint was pruned while being published; skipped", self.job_id)

    def publish_final(self, path: Path) -> str:
        key = self.key(path)
        if self.remote:
            self.artifacts.publish(path, key, before_commit=self.fenced)
        return key

    def start(self) -> None:
        """Publish time-based checkpoints as they appear (the training process reports only epoch ones)."""
        if self.remote:
            self._thread = threading.Thread(target=self._watch, name=f"sync-{self.job_id}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.publish_newest()
            except Exception:  # the next round, or the final publish after the run, tries again
                log.warning("job %s: could not publish a checkpoint", self.job_id, exc_info=True)

    # -- after the training process ended ------------------------------------------------------

    def finish(self) -> None:
        """The job succeeded: drop the checkpoint trees the database no longer names (the final
        model replaced the last one; no resume needs any)."""
        if self.remote:
            with self._lock:
                self.artifacts.prune_checkpoints(self.job_id, self.referenced(), keep_latest=False)

    def hand_over(self) -> None:
        """The job leaves this machine (requeued or paused; the lease still held): publish its
        newest checkpoint, and once the store has it free the local copies. A resume anywhere, here
        included, fetches it through the bounded cache: no job's scratch outlives its run here."""
        if not self.remote:
            return
        self.publish_newest()
        local = local_checkpoints(self.out)
        if not local or max(local) in self.published:
            self.clean_local()

    def clean_local(self) -> None:
        """Once the job has ended and its trees are in the store, free this machine's disk."""
        if self.remote:
            for name in ("checkpoints", "final"):
                shutil.rmtree(self.out / name, ignore_errors=True)

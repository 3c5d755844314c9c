"""A size-bounded local cache (least recently used first out) of what object storage holds:
training files, adapters, fine-tuned models and the checkpoint a worker resumes from.

An entry is a directory of files, each with the size and sha256 recorded when it was written to
the store. It is downloaded into a temporary directory, every file checked against its record, and
renamed into place with its ``.entry`` record written last, so an entry that is visible is whole
and verified. A use touches the record; past ``max_bytes`` the least recently used entries go
(never one used in the last minutes, which a process may be reading). Several processes of one machine may share the directory: renames
make every step atomic, and a download that loses a race to an identical one is dropped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

RECORD = ".entry"
STALE_SECONDS = 3600.0
# An entry used this recently may be being read (a training process loading its base model or data
# starts minutes after the worker fetched them): it is not evicted, even past the size bound.
IN_USE_SECONDS = 600.0


class CacheIntegrityError(OSError):
    """A downloaded file's size or sha256 is not what the store recorded when it was written."""


@dataclass(frozen=True)
class Expected:
    """What a file must be, as recorded when it was written: its size, and its sha256 (what openft
    records) or MD5 (what S3 reports as the ETag of an object it stored in one piece)."""

    bytes: int
    sha256: str | None = None
    md5: str | None = None


def entry_name(key: str, version: str) -> str:
    return hashlib.sha256(f"{key}\0{version}".encode()).hexdigest()[:40]


class LocalCache:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.root.mkdir(parents=True, exist_ok=True)

    def get(
        self,
        key: str,
        version: str,
        files: dict[str, Expected],
        download: Callable[[str], Iterator[bytes]],
    ) -> Path:
        """The local directory holding ``files`` of ``key`` at ``version``; ``download(name)``
        streams one file from the store when the entry is missing or damaged."""
        entry = self.root / entry_name(key, version)
        if self._intact(entry, files):
            try:
                os.utime(entry / RECORD)
                return entry
            except FileNotFoundError:  # evicted by another process just now: fetch it again
                pass
        self._fill(entry, key, version, files, download)
        self.evict(keep=entry)
        return entry

    def _intact(self, entry: Path, files: dict[str, Expected]) -> bool:
        """Present and whole: the record exists and every file has its recorded size (the sha256
        was checked when the entry was filled; re-hashing gigabytes on every use is not affordable)."""
        if not (entry / RECORD).is_file():
            return False
        try:
            return all((entry / name).stat().st_size == want.bytes for name, want in files.items())
        except FileNotFoundError:
            return False

    def _fill(
        self,
        entry: Path,
        key: str,
        version: str,
        files: dict[str, Expected],
        download: Callable[[str], Iterator[bytes]],
    ) -> None:
        temp = self.root / f".tmp-{secrets.token_hex(8)}"
        temp.mkdir()
        try:
            for name, want in files.items():
                target = temp / name
                target.parent.mkdir(parents=True, exist_ok=True)
                digest, size = hashlib.sha256(), 0
                md5 = hashlib.md5(usedforsecurity=False) if want.md5 else None
                with open(target, "wb") as out:
                    for chunk in download(name):
                        digest.update(chunk)
                        if md5 is not None:
                            md5.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
                wrong = (
                    size != want.bytes
                    or (want.sha256 is not None and digest.hexdigest() != want.sha256)
                    or (md5 is not None and md5.hexdigest() != want.md5)
                )
                if wrong:
                    raise CacheIntegrityError(
                        f"{key}/{name}: downloaded {size} bytes with sha256 {digest.hexdigest()}, but the "
                        f"store recorded {want.bytes} bytes with sha256 {want.sha256} (md5 {want.md5})"
                    )
            total = sum(want.bytes for want in files.values())
            (temp / RECORD).write_text(json.dumps({"key": key, "version": version, "bytes": total}))
            self._replace(temp, entry)
        finally:
            shutil.rmtree(temp, ignore_errors=True)

    def _replace(self, temp: Path, entry: Path) -> None:
        if entry.exists():  # damaged (a file truncated or removed by hand): set it aside first
            self._discard(entry)
        try:
            os.rename(temp, entry)
        except OSError:
            # Another process filled the same entry meanwhile: identical content, keep theirs.
            if not (entry / RECORD).is_file():
                raise

    def _discard(self, entry: Path) -> None:
        doomed = self.root / f".trash-{secrets.token_hex(8)}"
        try:
            os.rename(entry, doomed)
        except FileNotFoundError:
            return
        shutil.rmtree(doomed, ignore_errors=True)

    def entries(self) -> list[tuple[float, int, Path]]:
        """(last use, bytes, directory) of every complete entry."""
        found = []
        for entry in self.root.iterdir():
            if entry.name.startswith("."):
                continue
            try:
                record = entry / RECORD
                used = record.stat().st_mtime
                size = int(json.loads(record.read_text())["bytes"])
            except (OSError, ValueError, KeyError):
                continue
            found.append((used, size, entry))
        return found

    def evict(self, keep: Path | None = None) -> int:
        """Remove least recently used entries until the cache fits ``max_bytes``; return how many.
        Entries used in the last ``IN_USE_SECONDS`` stay. Leftovers of crashed downloads older than
        an hour go too."""
        entries = sorted(self.entries())
        total = sum(size for _, size, _ in entries)
        recent = time.time() - IN_USE_SECONDS
        removed = 0
        for used, size, entry in entries:
            if total <= self.max_bytes:
                break
            if entry == keep or used > recent:
                continue
            self._discard(entry)
            total -= size
            removed += 1
        if total > self.max_bytes:
            log.warning(
                "the local cache %s holds %d bytes, over its limit of %d: what it holds was used in "
                "the last minutes (raise OPENFT_CACHE_MAX_GIB if this persists)",
                self.root,
                total,
                self.max_bytes,
            )
        cutoff = time.time() - STALE_SECONDS
        for leftover in self.root.glob(".tmp-*"):
            try:
                if leftover.stat().st_mtime < cutoff:
                    shutil.rmtree(leftover, ignore_errors=True)
            except FileNotFoundError:
                continue
        return removed

    def forget(self, key: str, version: str) -> None:
        """Drop an entry whose objects were deleted from the store (this machine's copy only)."""
        self._discard(self.root / entry_name(key, version))

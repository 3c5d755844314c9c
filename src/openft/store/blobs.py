"""Blob storage on a local (or shared, mounted) directory, written atomically.

A blob is written to a temporary name, fsynced and renamed into place, so a crash or a restart
mid-upload never leaves a half-file visible under a real key.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

CHUNK = 1024 * 1024
# A temporary nobody wrote to for this long belongs to a crashed writer.
STALE_TEMP_SECONDS = 3600.0


class BlobTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"blob exceeds {limit} bytes")
        self.limit = limit


class _Appender:
    """Writes chunks to an open file, counting and hashing them, refusing more than ``limit``."""

    def __init__(self, out: BinaryIO, limit: int | None) -> None:
        self.out = out
        self.limit = limit
        self.size = 0
        self.digest = hashlib.sha256()

    def __call__(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.limit is not None and self.size > self.limit:
            raise BlobTooLarge(self.limit)
        self.digest.update(chunk)
        self.out.write(chunk)


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / ".tmp").mkdir(exist_ok=True)

    def path(self, key: str) -> Path:
        if "/" in key or key.startswith("."):
            raise ValueError(f"invalid blob key {key!r}")
        return self.root / key

    def _temp(self) -> Path:
        return self.root / ".tmp" / secrets.token_hex(16)

    def _commit(self, temp: Path, key: str) -> None:
        os.rename(temp, self.path(key))
        fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def write(self, key: str, chunks: Iterable[bytes], *, limit: int | None = None) -> tuple[int, str]:
        """Store ``chunks`` under ``key``; return (size, sha256 hex). Raises BlobTooLarge past ``limit``."""
        with self._writing(key, limit) as add:
            for chunk in chunks:
                add(chunk)
        return add.size, add.digest.hexdigest()

    async def write_async(
        self, key: str, chunks: AsyncIterator[bytes], *, limit: int | None = None
    ) -> tuple[int, str]:
        """Like ``write`` for an async stream (an upload read chunk by chunk)."""
        with self._writing(key, limit) as add:
            async for chunk in chunks:
                add(chunk)
        return add.size, add.digest.hexdigest()

    @contextmanager
    def _writing(self, key: str, limit: int | None) -> Iterator[_Appender]:
        """A temporary file that becomes ``key`` (fsynced, renamed) only if the block completes."""
        temp = self._temp()
        try:
            with open(temp, "wb") as out:
                appender = _Appender(out, limit)
                yield appender
                out.flush()
                os.fsync(out.fileno())
            self._commit(temp, key)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise

    def write_file(self, key: str, source: BinaryIO, *, limit: int | None = None) -> tuple[int, str]:
        return self.write(key, iter(lambda: source.read(CHUNK), b""), limit=limit)

    def read_chunks(self, key: str) -> Iterator[bytes]:
        with open(self.path(key), "rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def clean_temp(self, idle_seconds: float = STALE_TEMP_SECONDS, *, now: float | None = None) -> int:
        """Remove temporaries left by a crash; return how many. Run at start-up and by the sweep.

        Only those untouched for ``idle_seconds``: on a shared filesystem another API replica or
        worker may be writing one right now (a temporary being written has a fresh mtime)."""
        removed = 0
        cutoff = (time.time() if now is None else now) - idle_seconds
        for temp in (self.root / ".tmp").iterdir():
            try:
                if temp.stat().st_mtime > cutoff:
                    continue
            except FileNotFoundError:
                continue
            temp.unlink(missing_ok=True)
            removed += 1
        return removed

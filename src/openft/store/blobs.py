"""Blob storage for files and upload parts: a local (or shared, mounted) directory, or a prefix of
an S3-compatible bucket (``OPENFT_STORAGE_URL``). Both stream, and both make a blob appear only when
it is complete.

On disk a blob is written to a temporary name, fsynced and renamed into place, so a crash or a
restart mid-upload never leaves a half-file visible under a real key. In a bucket it is one
PutObject or one multipart upload, which S3 makes visible atomically when it completes.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Protocol

from openft.store.cache import Expected, LocalCache
from openft.store.s3 import S3Bucket

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


class Blobs(Protocol):
    """What the files, uploads and storage services need of a blob store."""

    def write(self, key: str, chunks: Iterable[bytes], *, limit: int | None = None) -> tuple[int, str]: ...

    async def write_async(
        self, key: str, chunks: AsyncIterator[bytes], *, limit: int | None = None
    ) -> tuple[int, str]: ...

    def compose(
        self, key: str, sources: list[tuple[str, int]], observe: Callable[[bytes], None]
    ) -> tuple[int, str]: ...

    def read_chunks(self, key: str) -> Iterator[bytes]: ...

    def local_path(self, key: str, *, size: int, sha256: str) -> Path: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def keys_older_than(self, cutoff: float) -> Iterator[str]: ...

    def clean_temp(self, idle_seconds: float = STALE_TEMP_SECONDS, *, now: float | None = None) -> int: ...


def check_key(key: str) -> str:
    if not key or "/" in key or key.startswith("."):
        raise ValueError(f"invalid blob key {key!r}")
    return key


class BlobStore:
    """Blobs as files of one directory (``OPENFT_HOME/files``, or a shared mount)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / ".tmp").mkdir(exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

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

    def compose(
        self, key: str, sources: list[tuple[str, int]], observe: Callable[[bytes], None]
    ) -> tuple[int, str]:
        """Blob ``key`` made of the ``sources`` (key, size) in order; each byte passes ``observe``."""

        def concatenated() -> Iterator[bytes]:
            for source, _ in sources:
                for chunk in self.read_chunks(source):
                    observe(chunk)
                    yield chunk

        return self.write(key, concatenated())

    def read_chunks(self, key: str) -> Iterator[bytes]:
        with open(self.path(key), "rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk

    def local_path(self, key: str, *, size: int, sha256: str) -> Path:
        """A path a training process can read the blob from: the blob itself, here."""
        return self.path(key)

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def keys_older_than(self, cutoff: float) -> Iterator[str]:
        """Blobs last written at or before ``cutoff`` (unix seconds): the orphan sweep's candidates."""
        for entry in os.scandir(self.root):
            if entry.name.startswith(".") or not entry.is_file():
                continue
            try:
                if entry.stat().st_mtime <= cutoff:
                    yield entry.name
            except FileNotFoundError:
                continue

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


class S3BlobStore:
    """Blobs as objects under ``<prefix>files/`` of a bucket; training processes read them through
    the local cache, checked against the size and sha256 recorded when they were written."""

    NAMESPACE = "files/"

    def __init__(self, bucket: S3Bucket, cache: LocalCache) -> None:
        self.bucket = bucket
        self.cache = cache

    def _name(self, key: str) -> str:
        return self.NAMESPACE + check_key(key)

    def write(self, key: str, chunks: Iterable[bytes], *, limit: int | None = None) -> tuple[int, str]:
        return self.bucket.put(self._name(key), chunks, limit=limit, too_large=BlobTooLarge)

    async def write_async(
        self, key: str, chunks: AsyncIterator[bytes], *, limit: int | None = None
    ) -> tuple[int, str]:
        return await self.bucket.put_async(self._name(key), chunks, limit=limit, too_large=BlobTooLarge)

    def write_file(self, key: str, source: BinaryIO, *, limit: int | None = None) -> tuple[int, str]:
        return self.write(key, iter(lambda: source.read(CHUNK), b""), limit=limit)

    def compose(
        self, key: str, sources: list[tuple[str, int]], observe: Callable[[bytes], None]
    ) -> tuple[int, str]:
        return self.bucket.compose(
            self._name(key), [(self._name(source), size) for source, size in sources], observe
        )

    def read_chunks(self, key: str) -> Iterator[bytes]:
        return self.bucket.get_chunks(self._name(key))

    def local_path(self, key: str, *, size: int, sha256: str) -> Path:
        entry = self.cache.get(
            self._name(key), sha256, {"data": Expected(size, sha256)}, lambda _: self.read_chunks(key)
        )
        return entry / "data"

    def exists(self, key: str) -> bool:
        return self.bucket.head(self._name(key)) is not None

    def delete(self, key: str) -> None:
        self.bucket.delete(self._name(key))

    def keys_older_than(self, cutoff: float) -> Iterator[str]:
        for name, _, modified in self.bucket.list(self.NAMESPACE):
            key = name[len(self.NAMESPACE) :]
            if "/" not in key and modified.timestamp() <= cutoff:
                yield key

    def clean_temp(self, idle_seconds: float = STALE_TEMP_SECONDS, *, now: float | None = None) -> int:
        """Abort the multipart uploads of crashed writers (untouched for ``idle_seconds``)."""
        cutoff = (time.time() if now is None else now) - idle_seconds
        return self.bucket.abort_stale_uploads(self.NAMESPACE, datetime.fromtimestamp(cutoff, UTC))

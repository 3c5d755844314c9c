"""S3-compatible object storage (AWS S3, MinIO, Ceph RGW, Cloudflare R2, GCS's S3 API): the bucket
and prefix of ``OPENFT_STORAGE_URL``, and the few object operations openft needs, streamed.

An object appears only when complete: a PutObject or a CompleteMultipartUpload is atomic in S3, so
a writer that dies midway leaves at most an unfinished multipart upload (invisible to readers, swept
by ``abort_stale_uploads``), never half an object under a real key. Every "not found" that S3 answers
is raised as ``FileNotFoundError``, as the local directory does.

boto3 is imported on first use (the ``s3`` extra); endpoint, region and credentials come from
boto3's usual places (``AWS_*`` variables, ``~/.aws``, instance roles), plus ``OPENFT_S3_ENDPOINT_URL``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlparse

CHUNK = 1024 * 1024
# What one writer holds in memory: one part. S3 refuses parts under 5 MiB (but the last) or over
# 5 GiB, and more than 10,000 parts in an object: each thousand parts, the part size grows by 8 MiB
# (about 440 GB in 10,000 parts, at most 80 MiB held).
PART_BYTES = 8 * 1024 * 1024
PARTS_PER_SIZE = 1000
MIN_PART_BYTES = 5 * 1024 * 1024
MAX_COPY_PART_BYTES = 5 * 1024**3
_NOT_FOUND = {"NoSuchKey", "404", "NotFound", "NoSuchUpload"}
_NEVER = timedelta(days=1)  # "first seen" of an upload no sweep saw before: after any cutoff


class StorageUrlError(ValueError):
    """``OPENFT_STORAGE_URL`` is not an ``s3://bucket/prefix`` URL."""


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # "" or ends with "/"

    @classmethod
    def parse(cls, url: str) -> S3Location:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise StorageUrlError(
                f"OPENFT_STORAGE_URL must look like s3://bucket or s3://bucket/prefix, got {url!r}."
            )
        if parsed.query or parsed.fragment:
            raise StorageUrlError(f"OPENFT_STORAGE_URL takes no query or fragment, got {url!r}.")
        prefix = parsed.path.strip("/")
        return cls(parsed.netloc, f"{prefix}/" if prefix else "")


def connect(endpoint_url: str | None = None) -> Any:
    """A boto3 S3 client (thread-safe; share one per process)."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:  # pragma: no cover - depends on the installation
        raise StorageUrlError(
            "OPENFT_STORAGE_URL=s3://... needs boto3: install openft with the s3 extra (pip install 'openft[s3]')."
        ) from None
    config = Config(retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=32)
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url or None, config=config)


def is_not_found(exc: BaseException) -> bool:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    return str(response.get("Error", {}).get("Code")) in _NOT_FOUND


class _Writer:
    """One object being written: chunks are counted, hashed and buffered into parts; the object is
    a single PutObject if it fits in one part, else a multipart upload; ``abort`` on any failure."""

    def __init__(self, bucket: S3Bucket, name: str, limit: int | None, too_large: Callable[[int], Exception]):
        self.bucket = bucket
        self.key = bucket.key(name)
        self.limit = limit
        self.too_large = too_large
        self.size = 0
        self.digest = hashlib.sha256()
        self.buffer = bytearray()
        self.cut = 0  # parts cut from the buffer so far
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        """Take a chunk; return the full parts (PART_BYTES each) now ready to send."""
        self.size += len(chunk)
        if self.limit is not None and self.size > self.limit:
            raise self.too_large(self.limit)
        self.digest.update(chunk)
        self.buffer += chunk
        ready = []
        while len(self.buffer) >= (size := PART_BYTES * (1 + self.cut // PARTS_PER_SIZE)):
            ready.append(bytes(self.buffer[:size]))
            del self.buffer[:size]
            self.cut += 1
        return ready

    def send(self, part: bytes) -> None:
        client = self.bucket.client
        if self.upload_id is None:
            created = client.create_multipart_upload(Bucket=self.bucket.name, Key=self.key)
            self.upload_id = created["UploadId"]
        number = len(self.parts) + 1
        sent = client.upload_part(
            Bucket=self.bucket.name, Key=self.key, UploadId=self.upload_id, PartNumber=number, Body=part
        )
        self.parts.append({"PartNumber": number, "ETag": sent["ETag"]})

    def copy(self, source_name: str) -> None:
        """A server-side part copied from another object of the bucket (at least MIN_PART_BYTES
        unless it is the last part); nothing may be buffered."""
        assert not self.buffer
        client = self.bucket.client
        if self.upload_id is None:
            created = client.create_multipart_upload(Bucket=self.bucket.name, Key=self.key)
            self.upload_id = created["UploadId"]
        number = len(self.parts) + 1
        copied = client.upload_part_copy(
            Bucket=self.bucket.name,
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=number,
            CopySource={"Bucket": self.bucket.name, "Key": self.bucket.key(source_name)},
        )
        self.parts.append({"PartNumber": number, "ETag": copied["CopyPartResult"]["ETag"]})

    def finish(self) -> tuple[int, str]:
        client = self.bucket.client
        if self.upload_id is None:
            client.put_object(Bucket=self.bucket.name, Key=self.key, Body=bytes(self.buffer))
        else:
            if self.buffer:
                self.send(bytes(self.buffer))
                self.buffer = bytearray()
            client.complete_multipart_upload(
                Bucket=self.bucket.name,
                Key=self.key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": self.parts},
            )
        return self.size, self.digest.hexdigest()

    def abort(self) -> None:
        if self.upload_id is not None:
            # Failing that, the stale-upload sweep aborts it later.
            with contextlib.suppress(Exception):
                self.bucket.client.abort_multipart_upload(
                    Bucket=self.bucket.name, Key=self.key, UploadId=self.upload_id
                )


class S3Bucket:
    """Objects under one prefix of one bucket, by names relative to that prefix."""

    def __init__(self, client: Any, location: S3Location) -> None:
        self.client = client
        self.name = location.bucket
        self.prefix = location.prefix
        self._uploads_seen: dict[str, datetime] = {}  # multipart upload id -> when a sweep first saw it

    def key(self, name: str) -> str:
        return self.prefix + name

    def describe(self) -> str:
        return f"s3://{self.name}/{self.prefix}"

    def check(self) -> None:
        """Fail at start-up, with the bucket's name, if it cannot be reached."""
        try:
            self.client.head_bucket(Bucket=self.name)
        except Exception as exc:
            raise StorageUrlError(
                f"Cannot reach the bucket of OPENFT_STORAGE_URL ({self.describe()}): {exc}. Check that it "
                "exists, OPENFT_S3_ENDPOINT_URL (MinIO, R2, ...) and the AWS_* credentials."
            ) from exc

    # -- writing ---------------------------------------------------------------------------------

    def put(
        self,
        name: str,
        chunks: Iterable[bytes],
        *,
        limit: int | None = None,
        too_large: Callable[[int], Exception] = ValueError,
    ) -> tuple[int, str]:
        """Stream ``chunks`` into object ``name``; return (size, sha256 hex)."""
        writer = _Writer(self, name, limit, too_large)
        try:
            for chunk in chunks:
                for part in writer.feed(chunk):
                    writer.send(part)
            return writer.finish()
        except BaseException:
            writer.abort()
            raise

    async def put_async(
        self,
        name: str,
        chunks: AsyncIterator[bytes],
        *,
        limit: int | None = None,
        too_large: Callable[[int], Exception] = ValueError,
    ) -> tuple[int, str]:
        """Like ``put`` for an async stream; each request to S3 runs in a thread, off the event loop."""
        writer = _Writer(self, name, limit, too_large)
        try:
            async for chunk in chunks:
                for part in writer.feed(chunk):
                    await asyncio.to_thread(writer.send, part)
            return await asyncio.to_thread(writer.finish)
        except BaseException:
            await asyncio.to_thread(writer.abort)
            raise

    def put_bytes(self, name: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.name, Key=self.key(name), Body=data)

    def compose(
        self, name: str, sources: list[tuple[str, int]], observe: Callable[[bytes], None]
    ) -> tuple[int, str]:
        """Object ``name`` made of ``sources`` (name, size) in order; every byte passes through
        ``observe`` once. Parts of at least 5 MiB (all but the last) are copied inside S3, the bytes
        only read for the checksums; smaller ones are streamed through into new parts."""
        server_side = (
            1 < len(sources) <= 10_000
            and all(size >= MIN_PART_BYTES for _, size in sources[:-1])
            and all(size <= MAX_COPY_PART_BYTES for _, size in sources)
        )
        writer = _Writer(self, name, None, ValueError)
        try:
            for source, _ in sources:
                for chunk in self.get_chunks(source):
                    observe(chunk)
                    if server_side:
                        writer.size += len(chunk)
                        writer.digest.update(chunk)
                    else:
                        for part in writer.feed(chunk):
                            writer.send(part)
                if server_side:
                    writer.copy(source)
            return writer.finish()
        except BaseException:
            writer.abort()
            raise

    # -- reading ---------------------------------------------------------------------------------

    def get_chunks(self, name: str) -> Iterator[bytes]:
        """The object's bytes, streamed; ``FileNotFoundError`` if there is none."""
        try:
            body = self.client.get_object(Bucket=self.name, Key=self.key(name))["Body"]
        except Exception as exc:
            if is_not_found(exc):
                raise FileNotFoundError(f"no object {self.key(name)!r} in bucket {self.name!r}") from exc
            raise
        try:
            yield from body.iter_chunks(CHUNK)
        finally:
            body.close()

    def get_bytes(self, name: str) -> bytes:
        return b"".join(self.get_chunks(name))

    def head(self, name: str) -> dict[str, Any] | None:
        try:
            return self.client.head_object(Bucket=self.name, Key=self.key(name))
        except Exception as exc:
            if is_not_found(exc):
                return None
            raise

    def list(self, prefix: str = "") -> Iterator[tuple[str, int, datetime]]:
        """(name, size, last modified) of every object under ``prefix``."""
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.name, Prefix=self.key(prefix)):
            for item in page.get("Contents", ()):
                yield item["Key"][len(self.prefix) :], int(item["Size"]), item["LastModified"]

    def children(self, prefix: str) -> list[str]:
        """The names of the "directories" right under ``prefix`` (which ends with '/')."""
        paginator = self.client.get_paginator("list_objects_v2")
        found = []
        for page in paginator.paginate(Bucket=self.name, Prefix=self.key(prefix), Delimiter="/"):
            for common in page.get("CommonPrefixes", ()):
                found.append(common["Prefix"][len(self.key(prefix)) :].rstrip("/"))
        return found

    # -- deleting --------------------------------------------------------------------------------

    def delete(self, name: str) -> None:
        self.client.delete_object(Bucket=self.name, Key=self.key(name))

    def delete_many(self, names: Iterable[str]) -> int:
        batch: list[str] = []
        deleted = 0
        for name in names:
            batch.append(name)
            if len(batch) == 1000:  # S3's limit per DeleteObjects
                deleted += self._delete_batch(batch)
                batch = []
        if batch:
            deleted += self._delete_batch(batch)
        return deleted

    def _delete_batch(self, names: list[str]) -> int:
        self.client.delete_objects(
            Bucket=self.name, Delete={"Objects": [{"Key": self.key(n)} for n in names], "Quiet": True}
        )
        return len(names)

    def abort_stale_uploads(self, prefix: str, cutoff: datetime) -> int:
        """Abort multipart uploads under ``prefix`` idle since before ``cutoff``: their writer
        crashed (a live one sends a part every few seconds). They hold storage, never visible data.

        Idle means started before the cutoff, no part sent since, and already seen by an earlier
        sweep of this process before the cutoff: some S3 servers report a fixed ``Initiated`` date,
        and an upload whose first part is still on its way has no part to date it by."""
        paginator = self.client.get_paginator("list_multipart_uploads")
        aborted = 0
        seen_now: dict[str, datetime] = {}
        for page in paginator.paginate(Bucket=self.name, Prefix=self.key(prefix)):
            for upload in page.get("Uploads", ()):
                upload_id = upload["UploadId"]
                first_seen = self._uploads_seen.get(upload_id, cutoff + _NEVER)
                seen_now[upload_id] = min(first_seen, datetime.now(UTC))
                if upload["Initiated"] > cutoff or first_seen > cutoff or self._last_part(upload) > cutoff:
                    continue
                try:
                    self.client.abort_multipart_upload(
                        Bucket=self.name, Key=upload["Key"], UploadId=upload_id
                    )
                except Exception as exc:
                    if not is_not_found(exc):  # another replica aborted it first
                        raise
                seen_now.pop(upload_id)
                aborted += 1
        self._uploads_seen = seen_now
        return aborted

    def _last_part(self, upload: dict[str, Any]) -> datetime:
        parts = self.client.list_parts(Bucket=self.name, Key=upload["Key"], UploadId=upload["UploadId"])
        return max((part["LastModified"] for part in parts.get("Parts", ())), default=upload["Initiated"])

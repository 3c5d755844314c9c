"""Files: stream uploads into blobs, record them per owner (organization and project), list, read, delete."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from openft import ids, jsontext
from openft.domain.scope import Owner, Scope
from openft.errors import InvalidRequestError, NotFoundError, PayloadTooLargeError
from openft.store import files as store
from openft.store.blobs import BlobTooLarge
from openft.store.tables import FileRow

if TYPE_CHECKING:
    from openft.services.context import Services

# What POST /files accepts; fine-tune-results and the *_output purposes are only ever minted by us.
CREATE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
ALL_PURPOSES = (*CREATE_PURPOSES, "assistants_output", "batch_output", "fine-tune-results")
MIN_EXPIRY_SECONDS = 3600
MAX_EXPIRY_SECONDS = 30 * 24 * 3600
# A first line longer than this is left to the job's validation phase rather than parsed here.
FIRST_LINE_PROBE_BYTES = 16 * 1024 * 1024
NOT_JSONL = "Invalid file format for Fine-Tuning API. Must be .jsonl"
# The columns that store them (files.filename, uploads.filename, uploads.mime_type).
MAX_FILENAME = 1024
MAX_MIME_TYPE = 256


@dataclass(frozen=True)
class StagedBlob:
    """Bytes already stored under ``key`` but not yet recorded as a file."""

    key: str
    bytes: int
    sha256: str


def not_found(file_id: str) -> NotFoundError:
    return NotFoundError(f"No such File object: {file_id}", param="id")


def check_purpose(purpose: str | None, allowed: tuple[str, ...] = CREATE_PURPOSES) -> str:
    if not purpose:
        raise InvalidRequestError("Missing required parameter: 'purpose'.", param="purpose")
    if purpose not in allowed:
        raise InvalidRequestError(
            f"Invalid value for 'purpose': {purpose!r}. Supported values are: {', '.join(allowed)}.",
            param="purpose",
        )
    return purpose


def check_text(value: str, what: str, limit: int, param: str) -> str:
    """A caller's text that a column stores: at most ``limit`` characters, no NUL (PostgreSQL
    text cannot hold one)."""
    if "\x00" in value:
        raise InvalidRequestError(f"The {what} contains a NUL character, which is not allowed.", param=param)
    if len(value) > limit:
        raise InvalidRequestError(
            f"The {what} is {len(value)} characters long; at most {limit} are allowed.", param=param
        )
    return value


def expiry(anchor: str | None, seconds: str | int | None, created_at: int) -> int | None:
    """``expires_after`` → ``expires_at``; both halves or neither."""
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise InvalidRequestError(
            f"Invalid value for 'expires_after.anchor': {anchor!r}. The only supported anchor is 'created_at'.",
            param="expires_after.anchor",
        )
    try:
        value = int(seconds)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = -1
    if not MIN_EXPIRY_SECONDS <= value <= MAX_EXPIRY_SECONDS:
        raise InvalidRequestError(
            f"Invalid value for 'expires_after.seconds': {seconds!r}. Use a whole number of seconds between "
            f"{MIN_EXPIRY_SECONDS} (1 hour) and {MAX_EXPIRY_SECONDS} (30 days).",
            param="expires_after.seconds",
        )
    return created_at + value


class FileService:
    def __init__(self, services: Services) -> None:
        self.db = services.db
        self.blobs = services.blobs
        self.settings = services.settings

    # -- writing ---------------------------------------------------------------------------------

    async def stage(self, chunks: AsyncIterator[bytes]) -> StagedBlob:
        """Stream an upload into a fresh blob, refusing it past ``max_file_bytes``."""
        key = ids.file_id()
        limit = self.settings.max_file_bytes
        try:
            size, sha256 = await self.blobs.write_async(key, chunks, limit=limit)
        except BlobTooLarge:
            raise PayloadTooLargeError(
                f"File is too large: the limit for POST /v1/files is {limit} bytes. Use the Uploads API "
                "(client.uploads.upload_file_chunked) for larger files.",
                param="file",
            ) from None
        return StagedBlob(key=key, bytes=size, sha256=sha256)

    def discard(self, staged: StagedBlob) -> None:
        self.blobs.delete(staged.key)

    def create(
        self,
        owner: Owner,
        staged: StagedBlob,
        *,
        filename: str,
        purpose: str | None,
        expires_after_anchor: str | None = None,
        expires_after_seconds: str | int | None = None,
    ) -> FileRow:
        """Record a staged blob as a file, after the checks that need no job; discards it on refusal."""
        created_at = int(time.time())
        try:
            purpose = check_purpose(purpose)
            expires_at = expiry(expires_after_anchor, expires_after_seconds, created_at)
            if purpose == "fine-tune" and (problem := self.jsonl_problem(staged.key)):
                raise InvalidRequestError(problem, param="file")
            return self.record(owner, staged, filename=filename, purpose=purpose, expires_at=expires_at)
        except BaseException:
            self.discard(staged)
            raise

    def record(
        self,
        owner: Owner,
        staged: StagedBlob,
        *,
        filename: str,
        purpose: str,
        expires_at: int | None = None,
    ) -> FileRow:
        """Insert the row for an already-stored blob; its key becomes the file id."""
        scope = Scope.of(owner)
        row = FileRow(
            id=staged.key,
            organization_id=scope.organization_id,
            project_id=scope.project_id,
            filename=filename,
            purpose=purpose,
            bytes=staged.bytes,
            created_at=int(time.time()),
            expires_at=expires_at,
            status="processed",
            status_details=None,
            blob_key=staged.key,
            sha256=staged.sha256,
        )
        with self.db.transaction() as session:
            session.add(row)
        return row

    def create_from_bytes(self, owner: Owner, filename: str, purpose: str, data: bytes) -> FileRow:
        """Store a file we produced ourselves (result CSVs): any purpose, no format check."""
        check_purpose(purpose, ALL_PURPOSES)
        key = ids.file_id()
        size, sha256 = self.blobs.write(key, [data])
        staged = StagedBlob(key=key, bytes=size, sha256=sha256)
        try:
            return self.record(owner, staged, filename=filename, purpose=purpose)
        except BaseException:
            self.discard(staged)
            raise

    def jsonl_problem(self, key: str) -> str | None:
        """Why the blob is not JSONL, or None. Content, not extension, decides: the first
        non-blank line must be a JSON object (nested at most ``jsontext.MAX_DEPTH`` levels, so
        that parsing it cannot exhaust the parser's recursion)."""
        buffer = b""
        for chunk in self.blobs.read_chunks(key):
            buffer += chunk
            lines = buffer.lstrip(b"\xef\xbb\xbf \t\r\n").split(b"\n", 1)
            if len(lines) == 2 or len(buffer) >= FIRST_LINE_PROBE_BYTES:
                break
        first = buffer.lstrip(b"\xef\xbb\xbf \t\r\n").split(b"\n", 1)[0].strip()
        if not first:
            return NOT_JSONL  # empty or blank: nothing to train on, and certainly not JSONL
        if len(first) >= FIRST_LINE_PROBE_BYTES:
            return None
        if jsontext.nesting_depth_exceeds(first):
            return (
                f"{NOT_JSONL}: line 1 nests arrays and objects more than {jsontext.MAX_DEPTH} levels deep; "
                "a training example is a JSON object with a 'messages' list."
            )
        try:
            return None if isinstance(json.loads(first), dict) else NOT_JSONL
        except (ValueError, UnicodeDecodeError):
            return NOT_JSONL

    # -- reading ---------------------------------------------------------------------------------

    def get(self, owner: Owner, file_id: str) -> FileRow:
        """The file, if it exists, belongs to the owner's project and has not expired; else NotFoundError."""
        with self.db.read() as session:
            row = store.get(session, Scope.of(owner), file_id, now=int(time.time()))
        if row is None:
            raise not_found(file_id)
        return row

    def list(
        self,
        owner: Owner,
        *,
        purpose: str | None = None,
        limit: int = 10000,
        order: Literal["asc", "desc"] = "desc",
        after: str | None = None,
    ) -> tuple[list[FileRow], bool]:
        if not 1 <= limit <= 10000:
            raise InvalidRequestError(
                f"Invalid value for 'limit': {limit}. It must be between 1 and 10000.", param="limit"
            )
        scope = Scope.of(owner)
        with self.db.read() as session:
            after_pk = None
            if after is not None:
                after_pk = store.pk_of(session, scope, after)
                if after_pk is None:
                    raise InvalidRequestError(
                        f"Invalid value for 'after': {after!r} is not a file of yours. Pass the id of the last "
                        "file of the previous page.",
                        param="after",
                    )
            return store.page(
                session,
                scope,
                now=int(time.time()),
                limit=limit,
                order=order,
                after_pk=after_pk,
                purpose=purpose,
            )

    def local_path(self, row: FileRow) -> Path:
        """A path a training or validation process can read the file from (from the local cache,
        checked against the recorded size and sha256, when files live in object storage)."""
        return self.blobs.local_path(row.blob_key, size=row.bytes, sha256=row.sha256)

    def content(self, owner: Owner, file_id: str) -> Iterator[bytes]:
        row = self.get(owner, file_id)
        return self.blobs.read_chunks(row.blob_key)

    # -- deleting --------------------------------------------------------------------------------

    def delete(self, owner: Owner, file_id: str) -> None:
        row = self.get(owner, file_id)
        with self.db.transaction() as session:
            if not store.delete_row(session, Scope.of(owner), file_id):
                raise not_found(file_id)
        # After the commit: a crash here leaves an orphan blob, never a row without its bytes.
        self.blobs.delete(row.blob_key)

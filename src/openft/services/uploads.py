"""Uploads: a large file sent in parts, then assembled atomically into one File."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from openft import ids
from openft.domain.scope import Owner, Scope
from openft.errors import InvalidRequestError, NotFoundError, PayloadTooLargeError
from openft.services.files import MAX_FILENAME, MAX_MIME_TYPE, StagedBlob, check_purpose, check_text, expiry
from openft.store import files as file_store
from openft.store import uploads as store
from openft.store.blobs import BlobTooLarge
from openft.store.tables import FileRow, UploadPartRow, UploadRow

if TYPE_CHECKING:
    from openft.services.context import Services

UPLOAD_LIFETIME_SECONDS = 3600


@dataclass(frozen=True)
class UploadView:
    """An upload as the caller sees it: the row, its effective status, and its file once completed."""

    row: UploadRow
    status: str
    file: FileRow | None = None


def _status(row: UploadRow, now: int) -> str:
    if row.status == "pending" and now >= row.expires_at:
        return "expired"
    return row.status


class UploadService:
    def __init__(self, services: Services) -> None:
        self.db = services.db
        self.blobs = services.blobs
        self.settings = services.settings
        self.files = services.files

    def create(
        self,
        owner: Owner,
        *,
        filename: str,
        purpose: str,
        bytes: int,
        mime_type: str,
        expires_after_anchor: str | None = None,
        expires_after_seconds: int | None = None,
    ) -> UploadView:
        check_purpose(purpose)
        limit = self.settings.max_upload_bytes
        if not 0 < bytes <= limit:
            raise InvalidRequestError(
                f"Invalid value for 'bytes': {bytes}. An upload must declare between 1 and {limit} bytes.",
                param="bytes",
            )
        if not filename:
            raise InvalidRequestError("Missing required parameter: 'filename'.", param="filename")
        check_text(filename, "filename", MAX_FILENAME, "filename")
        check_text(mime_type, "mime_type", MAX_MIME_TYPE, "mime_type")
        now = int(time.time())
        # Validated now so the caller learns at once; the expiry applies to the completed file.
        expiry(expires_after_anchor, expires_after_seconds, now)
        scope = Scope.of(owner)
        row = UploadRow(
            id=ids.upload_id(),
            organization_id=scope.organization_id,
            project_id=scope.project_id,
            filename=filename,
            purpose=purpose,
            bytes=bytes,
            mime_type=mime_type,
            created_at=now,
            expires_at=now + UPLOAD_LIFETIME_SECONDS,
            status="pending",
            file_id=None,
        )
        with self.db.transaction() as session:
            session.add(row)
        return UploadView(row, "pending")

    def get(self, owner: Owner, upload_id: str) -> UploadView:
        scope = Scope.of(owner)
        with self.db.read() as session:
            row = store.get(session, scope, upload_id)
            if row is None:
                raise NotFoundError(f"No such Upload object: {upload_id}", param="upload_id")
            file = file_store.get(session, scope, row.file_id, now=0) if row.file_id else None
        return UploadView(row, _status(row, int(time.time())), file)

    def check_open(self, owner: Owner, upload_id: str) -> UploadRow:
        """The upload, if it still accepts parts and completion; else a 400 saying why."""
        view = self.get(owner, upload_id)
        if view.status != "pending":
            raise _closed(view.row, view.status)
        return view.row

    # -- parts -----------------------------------------------------------------------------------

    def room_for_part(self, owner: Owner, upload_id: str) -> int:
        """How many bytes the next part may hold: what the upload declared, less its parts so far,
        at most ``max_part_bytes``. A 400 when the upload is closed or already full."""
        upload = self.check_open(owner, upload_id)
        with self.db.read() as session:
            room = upload.bytes - store.part_bytes(session, upload_id)
        if room <= 0:
            raise _beyond_declared(upload)
        return min(room, self.settings.max_part_bytes)

    async def stage_part(self, chunks: AsyncIterator[bytes], *, room: int | None = None) -> StagedBlob:
        """Stream a part into a fresh blob, refusing it past ``max_part_bytes`` (413) or past the
        ``room`` left in its upload (400)."""
        key = ids.part_id()
        part_limit = self.settings.max_part_bytes
        limit = part_limit if room is None else min(room, part_limit)
        try:
            size, sha256 = await self.blobs.write_async(key, chunks, limit=limit)
        except BlobTooLarge:
            if limit < part_limit:
                raise InvalidRequestError(
                    f"This part would take the upload past the {limit} bytes it still has room for (the "
                    "upload declared its size in 'bytes'). Send the rest of the file only, or create a new "
                    "upload with the right size.",
                    param="data",
                ) from None
            raise PayloadTooLargeError(
                f"Upload part is too large: each part may hold at most {part_limit} bytes. Split the file "
                "into smaller parts.",
                param="data",
            ) from None
        return StagedBlob(key=key, bytes=size, sha256=sha256)

    def discard(self, staged: StagedBlob) -> None:
        self.blobs.delete(staged.key)

    def add_part(self, owner: Owner, upload_id: str, staged: StagedBlob) -> UploadPartRow:
        """Record a staged part, or discard it. The upload's row is locked while the part is added,
        so a complete or cancel either sees the part (and removes its blob) or makes us refuse it."""
        try:
            with self.db.transaction() as session:
                upload = store.get(session, Scope.of(owner), upload_id, for_update=True)
                if upload is None:
                    raise NotFoundError(f"No such Upload object: {upload_id}", param="upload_id")
                status = _status(upload, int(time.time()))
                if status != "pending":
                    raise _closed(upload, status)
                if store.part_bytes(session, upload_id) + staged.bytes > upload.bytes:
                    raise _beyond_declared(upload)
                part = UploadPartRow(
                    id=staged.key,
                    upload_id=upload_id,
                    created_at=int(time.time()),
                    bytes=staged.bytes,
                    blob_key=staged.key,
                )
                session.add(part)
            return part
        except BaseException:
            self.discard(staged)
            raise

    # -- complete and cancel ---------------------------------------------------------------------

    def complete(
        self, owner: Owner, upload_id: str, part_ids: list[str], md5: str | None = None
    ) -> UploadView:
        upload = self.check_open(owner, upload_id)
        with self.db.read() as session:
            by_id = {part.id: part for part in store.parts(session, upload_id)}
        ordered = self._ordered_parts(upload, by_id, part_ids)

        digest = hashlib.md5(usedforsecurity=False)
        # The file blob appears atomically (temp + rename, or one S3 multipart upload whose large
        # parts are copied inside the bucket) and its row is inserted in the same transaction that
        # completes the upload, so a crash in between leaves no half-file visible.
        key = ids.file_id()
        try:
            size, sha256 = self.blobs.compose(
                key, [(part.blob_key, part.bytes) for part in ordered], observe=digest.update
            )
        except FileNotFoundError:
            # A concurrent complete, cancel or expiry sweep removed the parts while we read them.
            view = self.get(owner, upload_id)
            if view.status != "pending":
                raise _closed(view.row, view.status) from None
            raise
        staged = StagedBlob(key=key, bytes=size, sha256=sha256)
        try:
            if md5 is not None and md5.lower() != digest.hexdigest():
                raise InvalidRequestError(
                    f"The md5 checksum you sent ({md5}) does not match the assembled file's "
                    f"({digest.hexdigest()}). Check the part order and contents, then complete again.",
                    param="md5",
                )
            if upload.purpose == "fine-tune" and (problem := self.files.jsonl_problem(key)):
                raise InvalidRequestError(problem, param="part_ids")
            now = int(time.time())
            file = FileRow(
                id=key,
                organization_id=upload.organization_id,
                project_id=upload.project_id,
                filename=upload.filename,
                purpose=upload.purpose,
                bytes=size,
                created_at=now,
                expires_at=None,
                status="processed",
                status_details=None,
                blob_key=key,
                sha256=sha256,
            )
            with self.db.transaction() as session:
                if not store.set_status(
                    session, upload_id, expected="pending", status="completed", file_id=key, unexpired_at=now
                ):
                    current = store.get(session, Scope.of(owner), upload_id)
                    assert current is not None
                    raise _closed(current, _status(current, now))
                session.add(file)
                # Every part, also one added after we listed them: none may outlive the upload.
                removed = store.parts(session, upload_id)
                store.delete_parts(session, upload_id)
        except BaseException:
            self.discard(staged)
            raise
        for part in removed:
            self.blobs.delete(part.blob_key)
        upload.status, upload.file_id = "completed", key
        return UploadView(upload, "completed", file)

    def _ordered_parts(
        self, upload: UploadRow, by_id: dict[str, UploadPartRow], part_ids: list[str]
    ) -> list[UploadPartRow]:
        if not part_ids:
            raise InvalidRequestError("part_ids must list at least one part, in order.", param="part_ids")
        if len(set(part_ids)) != len(part_ids):
            raise InvalidRequestError("part_ids lists a part more than once.", param="part_ids")
        unknown = [pid for pid in part_ids if pid not in by_id]
        if unknown:
            raise InvalidRequestError(
                f"Part {unknown[0]} does not belong to upload {upload.id}. Pass only ids returned by "
                f"POST /v1/uploads/{upload.id}/parts.",
                param="part_ids",
            )
        ordered = [by_id[pid] for pid in part_ids]
        total = sum(part.bytes for part in ordered)
        if total != upload.bytes:
            raise InvalidRequestError(
                f"The parts hold {total} bytes but the upload was created with bytes={upload.bytes}. Add the "
                "missing parts, or create a new upload with the right size.",
                param="part_ids",
            )
        return ordered

    def cancel(self, owner: Owner, upload_id: str) -> UploadView:
        self.check_open(owner, upload_id)
        now = int(time.time())
        with self.db.transaction() as session:
            if not store.set_status(session, upload_id, expected="pending", status="cancelled"):
                current = store.get(session, Scope.of(owner), upload_id)
                assert current is not None
                raise _closed(current, _status(current, now))
            upload = store.get(session, Scope.of(owner), upload_id)
            assert upload is not None
            removed = store.parts(session, upload_id)
            store.delete_parts(session, upload_id)
        for part in removed:
            self.blobs.delete(part.blob_key)
        return UploadView(upload, "cancelled")


def _closed(upload: UploadRow, status: str) -> InvalidRequestError:
    hint = {
        "expired": "Uploads expire one hour after creation; create a new one.",
        "cancelled": "Create a new upload.",
        "completed": f"Its file is {upload.file_id}.",
    }[status]
    return InvalidRequestError(
        f"Upload {upload.id} is {status} and accepts no more changes. {hint}", param="upload_id"
    )


def _beyond_declared(upload: UploadRow) -> InvalidRequestError:
    return InvalidRequestError(
        f"This part would take upload {upload.id} past the {upload.bytes} bytes it declared. Complete it "
        "with the parts it has, or create a new upload with the right size.",
        param="data",
    )

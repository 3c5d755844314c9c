"""Wire models of the Uploads API: Upload, UploadPart and the create/complete request bodies."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from openft.api.schemas.files import OpenAIFile
from openft.store.tables import FileRow, UploadPartRow, UploadRow


class FileExpirationAfter(BaseModel):
    anchor: str
    seconds: int


class CreateUploadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filename: str
    purpose: str
    bytes: int
    mime_type: str
    expires_after: FileExpirationAfter | None = None


class CompleteUploadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    part_ids: list[str]
    md5: str | None = None


class Upload(BaseModel):
    id: str
    object: Literal["upload"] = "upload"
    bytes: int
    created_at: int
    expires_at: int
    filename: str
    purpose: str
    status: Literal["pending", "completed", "cancelled", "expired"]
    file: OpenAIFile | None

    @classmethod
    def from_row(cls, row: UploadRow, file: FileRow | None, *, status: str) -> Upload:
        return cls(
            id=row.id,
            bytes=row.bytes,
            created_at=row.created_at,
            expires_at=row.expires_at,
            filename=row.filename,
            purpose=row.purpose,
            status=status,  # type: ignore[arg-type]
            file=OpenAIFile.from_row(file) if file is not None else None,
        )


class UploadPart(BaseModel):
    id: str
    object: Literal["upload.part"] = "upload.part"
    created_at: int
    upload_id: str

    @classmethod
    def from_row(cls, row: UploadPartRow) -> UploadPart:
        return cls(id=row.id, created_at=row.created_at, upload_id=row.upload_id)

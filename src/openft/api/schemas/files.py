"""Wire models of the Files API: OpenAIFile, ListFilesResponse, DeleteFileResponse."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from openft.api.schemas.common import CursorPage
from openft.store.tables import FileRow


class OpenAIFile(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    expires_at: int | None
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"]
    status_details: str | None

    @classmethod
    def from_row(cls, row: FileRow) -> OpenAIFile:
        return cls(
            id=row.id,
            bytes=row.bytes,
            created_at=row.created_at,
            expires_at=row.expires_at,
            filename=row.filename,
            purpose=row.purpose,
            status=row.status,  # type: ignore[arg-type]
            status_details=row.status_details,
        )


ListFilesResponse = CursorPage[OpenAIFile]


class DeleteFileResponse(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool

"""Queries on uploads and their parts."""

from __future__ import annotations

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from openft.domain.scope import Scope
from openft.store.ownership import owned_by
from openft.store.tables import UploadPartRow, UploadRow


def get(session: Session, scope: Scope, upload_id: str) -> UploadRow | None:
    return session.scalar(select(UploadRow).where(UploadRow.id == upload_id, *owned_by(UploadRow, scope)))


def parts(session: Session, upload_id: str) -> list[UploadPartRow]:
    return list(session.scalars(select(UploadPartRow).where(UploadPartRow.upload_id == upload_id)))


def set_status(
    session: Session, upload_id: str, *, expected: str, status: str, file_id: str | None = None
) -> bool:
    """Compare-and-set: only one of complete and cancel can win a pending upload."""
    result = session.execute(
        update(UploadRow)
        .where(UploadRow.id == upload_id, UploadRow.status == expected)
        .values(status=status, file_id=file_id)
    )
    return result.rowcount == 1


def delete_parts(session: Session, upload_id: str) -> None:
    session.execute(delete(UploadPartRow).where(UploadPartRow.upload_id == upload_id))

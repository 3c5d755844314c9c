"""Queries on uploads and their parts."""

from __future__ import annotations

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from openft.domain.scope import Scope
from openft.store.ownership import owned_by
from openft.store.tables import UploadPartRow, UploadRow


def get(session: Session, scope: Scope, upload_id: str, *, for_update: bool = False) -> UploadRow | None:
    """With ``for_update``, PostgreSQL locks the row until the transaction ends (SQLite's write
    transactions hold the whole database already)."""
    query = select(UploadRow).where(UploadRow.id == upload_id, *owned_by(UploadRow, scope))
    if for_update:
        query = query.with_for_update()
    return session.scalar(query.execution_options(populate_existing=True))


def part_bytes(session: Session, upload_id: str) -> int:
    """The bytes of every part added so far."""
    total = session.scalar(select(func.sum(UploadPartRow.bytes)).where(UploadPartRow.upload_id == upload_id))
    return int(total or 0)


def parts(session: Session, upload_id: str) -> list[UploadPartRow]:
    return list(session.scalars(select(UploadPartRow).where(UploadPartRow.upload_id == upload_id)))


def set_status(
    session: Session,
    upload_id: str,
    *,
    expected: str,
    status: str,
    file_id: str | None = None,
    unexpired_at: int | None = None,
) -> bool:
    """Compare-and-set: only one of complete, cancel and the expiry sweep can win a pending upload.
    With ``unexpired_at``, only if the upload has not expired by then."""
    query = update(UploadRow).where(UploadRow.id == upload_id, UploadRow.status == expected)
    if unexpired_at is not None:
        query = query.where(UploadRow.expires_at > unexpired_at)
    result = session.execute(query.values(status=status, file_id=file_id))
    return result.rowcount == 1


def delete_parts(session: Session, upload_id: str) -> None:
    session.execute(delete(UploadPartRow).where(UploadPartRow.upload_id == upload_id))

"""Queries on file rows: by id within an organization, and newest-first cursor pages."""

from __future__ import annotations

from typing import Literal

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from openft.store.tables import FileRow


def _visible(organization_id: str, now: int):
    return (
        FileRow.organization_id == organization_id,
        or_(FileRow.expires_at.is_(None), FileRow.expires_at > now),
    )


def get(session: Session, organization_id: str, file_id: str, *, now: int) -> FileRow | None:
    return session.scalar(select(FileRow).where(FileRow.id == file_id, *_visible(organization_id, now)))


def page(
    session: Session,
    organization_id: str,
    *,
    now: int,
    limit: int,
    order: Literal["asc", "desc"],
    after_pk: int | None = None,
    purpose: str | None = None,
) -> tuple[list[FileRow], bool]:
    """Up to ``limit`` rows after the cursor, and whether more follow. Ordered by pk, never by id."""
    query = select(FileRow).where(*_visible(organization_id, now))
    if purpose is not None:
        query = query.where(FileRow.purpose == purpose)
    if after_pk is not None:
        query = query.where(FileRow.pk < after_pk if order == "desc" else FileRow.pk > after_pk)
    query = query.order_by(FileRow.pk.desc() if order == "desc" else FileRow.pk.asc()).limit(limit + 1)
    rows = list(session.scalars(query))
    return rows[:limit], len(rows) > limit


def pk_of(session: Session, organization_id: str, file_id: str) -> int | None:
    return session.scalar(
        select(FileRow.pk).where(FileRow.id == file_id, FileRow.organization_id == organization_id)
    )


def delete_row(session: Session, organization_id: str, file_id: str) -> bool:
    result = session.execute(
        delete(FileRow).where(FileRow.id == file_id, FileRow.organization_id == organization_id)
    )
    return result.rowcount > 0

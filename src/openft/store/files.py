"""Queries on file rows: by id within an owner's scope, and newest-first cursor pages."""

from __future__ import annotations

from typing import Literal

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from openft.domain.scope import Scope
from openft.store.ownership import owned_by
from openft.store.tables import FileRow


def _visible(scope: Scope, now: int):
    return (*owned_by(FileRow, scope), or_(FileRow.expires_at.is_(None), FileRow.expires_at > now))


def get(session: Session, scope: Scope, file_id: str, *, now: int) -> FileRow | None:
    return session.scalar(select(FileRow).where(FileRow.id == file_id, *_visible(scope, now)))


def page(
    session: Session,
    scope: Scope,
    *,
    now: int,
    limit: int,
    order: Literal["asc", "desc"],
    after_pk: int | None = None,
    purpose: str | None = None,
) -> tuple[list[FileRow], bool]:
    """Up to ``limit`` rows after the cursor, and whether more follow. Ordered by pk, never by id."""
    query = select(FileRow).where(*_visible(scope, now))
    if purpose is not None:
        query = query.where(FileRow.purpose == purpose)
    if after_pk is not None:
        query = query.where(FileRow.pk < after_pk if order == "desc" else FileRow.pk > after_pk)
    query = query.order_by(FileRow.pk.desc() if order == "desc" else FileRow.pk.asc()).limit(limit + 1)
    rows = list(session.scalars(query))
    return rows[:limit], len(rows) > limit


def pk_of(session: Session, scope: Scope, file_id: str) -> int | None:
    return session.scalar(select(FileRow.pk).where(FileRow.id == file_id, *owned_by(FileRow, scope)))


def delete_row(session: Session, scope: Scope, file_id: str) -> bool:
    result = session.execute(delete(FileRow).where(FileRow.id == file_id, *owned_by(FileRow, scope)))
    return result.rowcount > 0

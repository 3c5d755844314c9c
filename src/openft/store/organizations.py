"""Queries on organizations and their API keys."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from openft.store.tables import ApiKeyRow, OrganizationRow


def get_by_name(session: Session, name: str) -> OrganizationRow | None:
    return session.scalar(select(OrganizationRow).where(OrganizationRow.name == name))


def get(session: Session, organization_id: str) -> OrganizationRow | None:
    return session.scalar(select(OrganizationRow).where(OrganizationRow.id == organization_id))


def organization_for_key_hash(session: Session, key_hash: str) -> str | None:
    return session.scalar(select(ApiKeyRow.organization_id).where(ApiKeyRow.key_hash == key_hash))


def key_owner(session: Session, key_hash: str) -> tuple[str, str | None] | None:
    """(organization id, project id or None for an organization-wide key) of a key, or None."""
    row = session.execute(
        select(ApiKeyRow.organization_id, ApiKeyRow.project_id).where(ApiKeyRow.key_hash == key_hash)
    ).first()
    return (row[0], row[1]) if row is not None else None


def any_key(session: Session) -> bool:
    return session.scalar(select(ApiKeyRow.pk).limit(1)) is not None

"""Queries on projects and on the checkpoint permissions that share models with them."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from openft.domain.scope import DEFAULT_PROJECT, Scope
from openft.store.tables import CheckpointPermissionRow, ModelRow, ProjectRow


def get(session: Session, project_id: str) -> ProjectRow | None:
    return session.scalar(select(ProjectRow).where(ProjectRow.id == project_id))


def get_by_name(session: Session, organization_id: str, name: str) -> ProjectRow | None:
    return session.scalar(
        select(ProjectRow).where(ProjectRow.organization_id == organization_id, ProjectRow.name == name)
    )


def list_for(session: Session, organization_id: str) -> list[ProjectRow]:
    return list(
        session.scalars(
            select(ProjectRow).where(ProjectRow.organization_id == organization_id).order_by(ProjectRow.pk)
        )
    )


def project_id_of(session: Session, scope: Scope) -> str | None:
    """The real id of the scope's project; for the default project, None until its row exists
    (nothing can have been shared with a project that has no id yet)."""
    if scope.project_id is not None:
        return scope.project_id
    row = get_by_name(session, scope.organization_id, DEFAULT_PROJECT)
    return row.id if row is not None else None


def is_shared_with(session: Session, model_id: str, scope: Scope) -> bool:
    project_id = project_id_of(session, scope)
    if project_id is None:
        return False
    found = session.scalar(
        select(CheckpointPermissionRow.pk).where(
            CheckpointPermissionRow.model_id == model_id, CheckpointPermissionRow.project_id == project_id
        )
    )
    return found is not None


def shared_models(session: Session, scope: Scope) -> list[ModelRow]:
    """Models other projects share with the scope's project, oldest share first."""
    project_id = project_id_of(session, scope)
    if project_id is None:
        return []
    query = (
        select(ModelRow)
        .join(CheckpointPermissionRow, CheckpointPermissionRow.model_id == ModelRow.id)
        .where(CheckpointPermissionRow.project_id == project_id)
        .order_by(CheckpointPermissionRow.pk)
    )
    return list(session.scalars(query))

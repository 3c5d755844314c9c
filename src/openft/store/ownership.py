"""The one SQL condition for "this row belongs to that scope" (organization and project)."""

from __future__ import annotations

from typing import Any

from openft.domain.scope import Scope


def owned_by(table: Any, scope: Scope) -> tuple:
    """WHERE conditions selecting ``table``'s rows owned by ``scope``: same organization, same
    project (null ``project_id`` is the default project)."""
    project = table.project_id.is_(None) if scope.project_id is None else table.project_id == scope.project_id
    return (table.organization_id == scope.organization_id, project)

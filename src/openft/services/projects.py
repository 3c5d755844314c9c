"""Projects inside organizations: each organization has a ``default`` one; keys may be bound to one."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from sqlalchemy.exc import IntegrityError

from openft import ids
from openft.domain.scope import DEFAULT_PROJECT, Scope
from openft.store import projects as store
from openft.store.tables import ProjectRow

if TYPE_CHECKING:
    from openft.services.context import Services

MAX_NAME = 128


class ProjectService:
    def __init__(self, services: Services) -> None:
        self.db = services.db

    def ensure(self, organization_id: str, name: str) -> ProjectRow:
        """The project called ``name`` in the organization, created if needed (race-safe)."""
        name = name.strip()
        if not name or len(name) > MAX_NAME:
            raise ValueError(f"A project name has 1 to {MAX_NAME} characters, got {name!r}.")
        with self.db.transaction() as session:
            row = store.get_by_name(session, organization_id, name)
            if row is not None:
                return row
        try:
            with self.db.transaction() as session:
                row = ProjectRow(
                    id=ids.project_id(),
                    organization_id=organization_id,
                    name=name,
                    created_at=int(time.time()),
                )
                session.add(row)
            return row
        except IntegrityError:
            # Another process created it between our read and our insert.
            with self.db.transaction() as session:
                row = store.get_by_name(session, organization_id, name)
                assert row is not None
                return row

    def ensure_default(self, organization_id: str) -> ProjectRow:
        return self.ensure(organization_id, DEFAULT_PROJECT)

    def get(self, project_id: str) -> ProjectRow | None:
        with self.db.transaction() as session:
            return store.get(session, project_id)

    def list(self, organization_id: str) -> list[ProjectRow]:
        with self.db.transaction() as session:
            return store.list_for(session, organization_id)

    def find(self, organization_id: str, id_or_name: str) -> ProjectRow | None:
        """A project of the organization by id (what the ``OpenAI-Project`` header carries) or name."""
        with self.db.transaction() as session:
            row = store.get(session, id_or_name)
            if row is not None and row.organization_id == organization_id:
                return row
            return store.get_by_name(session, organization_id, id_or_name)

    def scope_of(self, row: ProjectRow) -> Scope:
        """The scope that owns a project's objects; the default project's objects have a null project."""
        return Scope(row.organization_id, None if row.name == DEFAULT_PROJECT else row.id)

    def id_of(self, scope: Scope) -> str:
        """The scope's project id, creating the default project's row on first use."""
        if scope.project_id is not None:
            return scope.project_id
        return self.ensure_default(scope.organization_id).id

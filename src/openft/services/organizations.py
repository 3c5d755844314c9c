"""Organizations (the tenant of every object) and the API keys that identify them."""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING

from sqlalchemy.exc import IntegrityError

from openft import ids
from openft.store import organizations as store
from openft.store.tables import ApiKeyRow, OrganizationRow

if TYPE_CHECKING:
    from openft.services.context import Services


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class OrganizationService:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.db = services.db
        self.default_name = ids.slug(services.settings.default_organization)

    def ensure(self, name: str) -> OrganizationRow:
        """Return the organization called ``name`` (slugged), creating it if needed."""
        slug = ids.slug(name)
        with self.db.read() as session:
            row = store.get_by_name(session, slug)
            if row is not None:
                return row
        try:
            with self.db.transaction() as session:
                row = OrganizationRow(id=ids.organization_id(), name=slug, created_at=int(time.time()))
                session.add(row)
            return row
        except IntegrityError:
            # Another process (an API replica, the CLI) created it between our read and our insert.
            with self.db.read() as session:
                row = store.get_by_name(session, slug)
                assert row is not None
                return row

    def find(self, name: str) -> OrganizationRow | None:
        """The organization called ``name`` (slugged), or None; never creates one."""
        with self.db.read() as session:
            return store.get_by_name(session, ids.slug(name))

    def ensure_default(self) -> OrganizationRow:
        return self.ensure(self.default_name)

    def get(self, organization_id: str) -> OrganizationRow | None:
        with self.db.read() as session:
            return store.get(session, organization_id)

    def has_keys(self) -> bool:
        """Whether any API key exists; without one every caller is the default organization."""
        with self.db.read() as session:
            return store.any_key(session)

    def create_key(self, org_name: str, *, key_name: str | None = None, project: str | None = None) -> str:
        """Mint an API key for ``org_name`` (created if needed). Only its sha256 is stored: show it once.

        With ``project`` (a name, created if needed) the key acts in that project only; without, it
        is organization-wide and the ``OpenAI-Project`` header picks the project (default: ``default``).
        """
        org = self.ensure(org_name)
        project_id = self.services.projects.ensure(org.id, project).id if project is not None else None
        key = ids.api_key()
        with self.db.transaction() as session:
            session.add(
                ApiKeyRow(
                    key_hash=hash_key(key),
                    organization_id=org.id,
                    project_id=project_id,
                    name=key_name,
                    created_at=int(time.time()),
                )
            )
        return key

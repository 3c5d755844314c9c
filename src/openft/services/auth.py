"""Turns the Authorization and OpenAI-Project headers into the caller's scope (organization and
project), or an AuthenticationError."""

from __future__ import annotations

from typing import TYPE_CHECKING

from openft.domain.scope import Scope
from openft.errors import AuthenticationError
from openft.services.organizations import hash_key
from openft.store import organizations as store

if TYPE_CHECKING:
    from openft.services.context import Services

MISSING_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using "
    "Bearer auth (i.e. Authorization: Bearer YOUR_KEY). Create one with `openft keys create`."
)


def mask(key: str) -> str:
    """``sk-...abcd``: enough for the owner to recognise the key, useless to anyone reading a log."""
    if len(key) <= 8:
        return "*" * len(key)
    return f"{key[:3]}...{key[-4:]}"


class AuthService:
    def __init__(self, services: Services) -> None:
        self.services = services
        self._default_organization_id: str | None = None

    def default_organization_id(self) -> str:
        if self._default_organization_id is None:
            self._default_organization_id = self.services.organizations.ensure_default().id
        return self._default_organization_id

    def authenticate(self, authorization: str | None) -> str:
        """Return the caller's organization id (see ``identify`` for the project too)."""
        return self.identify(authorization).organization_id

    def identify(self, authorization: str | None, project: str | None = None) -> Scope:
        """Return the caller's organization and project.

        With no key configured at all, everyone is the default organization (loopback-only mode,
        enforced by the CLI). Otherwise a valid Bearer key is required. A project-scoped key acts in
        its project; an organization-wide key in the project the ``OpenAI-Project`` header names
        (id or name), else in the default project.
        """
        key = _bearer(authorization)
        with self.services.db.read() as session:
            keys_configured = store.any_key(session)
            owner = store.key_owner(session, hash_key(key)) if key else None
        if not keys_configured:
            return self._in_project(self.default_organization_id(), None, project)
        if not key:
            error = AuthenticationError(MISSING_KEY)
            error.code = None  # OpenAI sends code null for a missing key
            raise error
        if owner is None:
            raise AuthenticationError(
                f"Incorrect API key provided: {mask(key)}. Check the key you passed, or create one with "
                "`openft keys create`."
            )
        return self._in_project(owner[0], owner[1], project)

    def _in_project(self, organization_id: str, key_project_id: str | None, header: str | None) -> Scope:
        projects = self.services.projects
        header = (header or "").strip() or None
        if key_project_id is not None:
            bound = projects.get(key_project_id)
            assert bound is not None, "api_keys.project_id names a project that does not exist"
            if header is not None and header not in (bound.id, bound.name):
                raise AuthenticationError(
                    f"The OpenAI-Project header ({header}) does not match the project of this API key "
                    f"({bound.id}). Remove the header, or use a key of that project.",
                    code="invalid_project",
                )
            return projects.scope_of(bound)
        if header is None:
            return Scope(organization_id)
        row = projects.find(organization_id, header)
        if row is None:
            raise AuthenticationError(
                f"The OpenAI-Project header names {header!r}, which is not a project of this organization. "
                "Create it with `openft keys create --organization ORG --project NAME`, or remove the header.",
                code="invalid_project",
            )
        return projects.scope_of(row)


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None

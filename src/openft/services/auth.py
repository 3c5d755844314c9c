"""Turns an Authorization header into the caller's organization id, or an AuthenticationError."""

from __future__ import annotations

from typing import TYPE_CHECKING

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
        """Return the caller's organization id.

        With no key configured at all, everyone is the default organization (loopback-only mode,
        enforced by the CLI). Otherwise a valid Bearer key is required.
        """
        key = _bearer(authorization)
        with self.services.db.read() as session:
            keys_configured = store.any_key(session)
            organization_id = store.organization_for_key_hash(session, hash_key(key)) if key else None
        if not keys_configured:
            return self.default_organization_id()
        if not key:
            error = AuthenticationError(MISSING_KEY)
            error.code = None  # OpenAI sends code null for a missing key
            raise error
        if organization_id is None:
            raise AuthenticationError(
                f"Incorrect API key provided: {mask(key)}. Check the key you passed, or create one with "
                "`openft keys create`."
            )
        return organization_id


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None

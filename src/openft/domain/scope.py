"""Who an object belongs to and who is asking: an organization and one of its projects."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PROJECT = "default"


@dataclass(frozen=True)
class Scope:
    """The caller's organization and project. ``project_id`` None is the organization's default
    project, which owns every row whose ``project_id`` is null (all rows made before projects)."""

    organization_id: str
    project_id: str | None = None

    @classmethod
    def of(cls, owner: Scope | str) -> Scope:
        """A plain organization id (the worker, the CLI, older callers) means its default project."""
        return owner if isinstance(owner, Scope) else cls(owner)

    def owns(self, organization_id: str, project_id: str | None) -> bool:
        """Whether a row with these owner columns belongs to this scope."""
        return organization_id == self.organization_id and project_id == self.project_id


Owner = Scope | str

"""Wire models of checkpoint permissions: FineTuningCheckpointPermission, its list and delete responses."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from openft.api.schemas.common import CursorPage
from openft.store.tables import CheckpointPermissionRow


class CreateFineTuningCheckpointPermissionRequest(BaseModel):
    """Loosely typed: the service checks ``project_ids`` and names it in a 400."""

    model_config = ConfigDict(extra="ignore")

    project_ids: Any


class FineTuningCheckpointPermission(BaseModel):
    id: str
    object: Literal["checkpoint.permission"] = "checkpoint.permission"
    created_at: int
    project_id: str

    @classmethod
    def from_row(cls, row: CheckpointPermissionRow) -> FineTuningCheckpointPermission:
        return cls(id=row.id, created_at=row.created_at, project_id=row.project_id)


class ListFineTuningCheckpointPermissionResponse(CursorPage[FineTuningCheckpointPermission]):
    pass


class DeleteFineTuningCheckpointPermissionResponse(BaseModel):
    id: str
    object: Literal["checkpoint.permission"] = "checkpoint.permission"
    deleted: bool

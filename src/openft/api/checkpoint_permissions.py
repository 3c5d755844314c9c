"""Routes of /v1/fine_tuning/checkpoints/{checkpoint}/permissions: create, list and delete (P1-P3).

``:path`` because checkpoint names hold ':' (and '/' when the base model's name does)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter

from openft.api.deps import Caller, ServicesDep
from openft.api.schemas.checkpoint_permissions import (
    CreateFineTuningCheckpointPermissionRequest,
    DeleteFineTuningCheckpointPermissionResponse,
    FineTuningCheckpointPermission,
    ListFineTuningCheckpointPermissionResponse,
)

router = APIRouter(tags=["fine_tuning"])
PATH = "/fine_tuning/checkpoints/{checkpoint:path}/permissions"


@router.post(PATH)
def create_permissions(
    checkpoint: str, body: CreateFineTuningCheckpointPermissionRequest, services: ServicesDep, caller: Caller
) -> ListFineTuningCheckpointPermissionResponse:
    rows = services.checkpoint_permissions.create(caller, checkpoint, body.project_ids)
    data = [FineTuningCheckpointPermission.from_row(r) for r in rows]
    return ListFineTuningCheckpointPermissionResponse.of(data, False)


@router.get(PATH)
def list_permissions(
    checkpoint: str,
    services: ServicesDep,
    caller: Caller,
    project_id: str | None = None,
    after: str | None = None,
    limit: int | None = None,
    order: Literal["ascending", "descending"] | None = None,
) -> ListFineTuningCheckpointPermissionResponse:
    page = services.checkpoint_permissions.list(
        caller, checkpoint, project_id=project_id, after=after, limit=limit, order=order
    )
    data = [FineTuningCheckpointPermission.from_row(r) for r in page.rows]
    return ListFineTuningCheckpointPermissionResponse.of(data, page.has_more)


@router.delete(PATH + "/{permission_id}")
def delete_permission(
    checkpoint: str, permission_id: str, services: ServicesDep, caller: Caller
) -> DeleteFineTuningCheckpointPermissionResponse:
    deleted = services.checkpoint_permissions.delete(caller, checkpoint, permission_id)
    return DeleteFineTuningCheckpointPermissionResponse(id=deleted, deleted=True)

"""Routes of /v1/models: list, retrieve and delete models (names may hold ':' and '/')."""

from __future__ import annotations

from fastapi import APIRouter

from openft.api.deps import OrganizationId, ServicesDep
from openft.api.schemas.models import DeleteModelResponse, ListModelsResponse, Model

router = APIRouter(tags=["models"])


@router.get("/models")
def list_models(services: ServicesDep, organization_id: OrganizationId) -> ListModelsResponse:
    return ListModelsResponse(data=[Model.of(info) for info in services.models.list(organization_id)])


# ``:path`` because base names may contain '/' (sent raw by old SDKs, as %2F by SDK >= 2.30,
# which the server decodes before routing) and ft: names contain ':'.
@router.get("/models/{model:path}")
def retrieve_model(model: str, services: ServicesDep, organization_id: OrganizationId) -> Model:
    return Model.of(services.models.retrieve(organization_id, model))


@router.delete("/models/{model:path}")
def delete_model(model: str, services: ServicesDep, organization_id: OrganizationId) -> DeleteModelResponse:
    return DeleteModelResponse(id=services.models.delete(organization_id, model), deleted=True)

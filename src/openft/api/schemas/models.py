"""Wire models of the Models API: Model, ListModelsResponse, DeleteModelResponse."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from openft.services.models import ModelInfo


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    shutdown_date: str | None = None

    @classmethod
    def of(cls, info: ModelInfo) -> Model:
        return cls(id=info.id, created=info.created, owned_by=info.owned_by)


class ListModelsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class DeleteModelResponse(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool

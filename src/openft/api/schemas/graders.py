"""Wire models of the graders API: RunGraderRequest/Response and ValidateGraderRequest/Response."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class RunGraderRequest(BaseModel):
    """Loosely typed on purpose: the service checks each field and names it in a 400."""

    model_config = ConfigDict(extra="ignore")

    grader: Any
    model_sample: Any = None
    item: Any = None


class ValidateGraderRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    grader: Any


class RunGraderResponse(BaseModel):
    reward: float
    metadata: dict[str, Any]
    sub_rewards: dict[str, Any]
    model_grader_token_usage_per_model: dict[str, Any]


class ValidateGraderResponse(BaseModel):
    grader: dict[str, Any]

"""Routes of /v1/fine_tuning/alpha/graders: run a grader on one sample, validate a grader."""

from __future__ import annotations

from fastapi import APIRouter, Request

from openft.api.deps import OrganizationId, ServicesDep
from openft.api.schemas.graders import (
    RunGraderRequest,
    RunGraderResponse,
    ValidateGraderRequest,
    ValidateGraderResponse,
)
from openft.serving.grader_models import EngineChatClient

router = APIRouter(tags=["graders"])


@router.post("/fine_tuning/alpha/graders/run")
def run_grader(
    body: RunGraderRequest, request: Request, services: ServicesDep, organization_id: OrganizationId
) -> RunGraderResponse:
    state = request.app.state
    chat = EngineChatClient(
        state.model_resolver, state.inference, organization_id, services.graders.external_chat()
    )
    result = services.graders.run(organization_id, body.grader, body.model_sample, body.item, chat=chat)
    return RunGraderResponse(**result)


@router.post("/fine_tuning/alpha/graders/validate")
def validate_grader(
    body: ValidateGraderRequest, services: ServicesDep, organization_id: OrganizationId
) -> ValidateGraderResponse:
    return ValidateGraderResponse(grader=services.graders.validate(organization_id, body.grader).wire)

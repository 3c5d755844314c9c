"""Routes of /v1/fine_tuning/jobs: create, list, retrieve, cancel, pause, resume, events, checkpoints."""

from __future__ import annotations

from fastapi import APIRouter, Request

from openft.api.deps import OrganizationId, ServicesDep
from openft.api.schemas.fine_tuning import (
    CreateFineTuningJobRequest,
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobEvent,
    ListFineTuningJobCheckpointsResponse,
    ListFineTuningJobEventsResponse,
    ListPaginatedFineTuningJobsResponse,
)

router = APIRouter(tags=["fine_tuning"])


def _metadata_filter(request: Request) -> dict[str, str]:
    """The SDK sends ``metadata={"k": "v"}`` as the query key ``metadata[k]=v``."""
    return {
        key[len("metadata[") : -1]: value
        for key, value in request.query_params.items()
        if key.startswith("metadata[") and key.endswith("]")
    }


@router.post("/fine_tuning/jobs")
def create_job(
    body: CreateFineTuningJobRequest, services: ServicesDep, organization_id: OrganizationId
) -> FineTuningJob:
    row = services.fine_tuning.create(organization_id, **body.model_dump(exclude_unset=True))
    return FineTuningJob.from_row(row)


@router.get("/fine_tuning/jobs")
def list_jobs(
    request: Request,
    services: ServicesDep,
    organization_id: OrganizationId,
    after: str | None = None,
    limit: int | None = None,
) -> ListPaginatedFineTuningJobsResponse:
    page = services.fine_tuning.list(
        organization_id, after=after, limit=limit, metadata=_metadata_filter(request)
    )
    return ListPaginatedFineTuningJobsResponse.of(
        [FineTuningJob.from_row(r) for r in page.rows], page.has_more
    )


@router.get("/fine_tuning/jobs/{job_id}")
def retrieve_job(job_id: str, services: ServicesDep, organization_id: OrganizationId) -> FineTuningJob:
    return FineTuningJob.from_row(services.fine_tuning.retrieve(organization_id, job_id))


@router.post("/fine_tuning/jobs/{job_id}/cancel")
def cancel_job(job_id: str, services: ServicesDep, organization_id: OrganizationId) -> FineTuningJob:
    return FineTuningJob.from_row(services.fine_tuning.cancel(organization_id, job_id))


@router.post("/fine_tuning/jobs/{job_id}/pause")
def pause_job(job_id: str, services: ServicesDep, organization_id: OrganizationId) -> FineTuningJob:
    return FineTuningJob.from_row(services.fine_tuning.pause(organization_id, job_id))


@router.post("/fine_tuning/jobs/{job_id}/resume")
def resume_job(job_id: str, services: ServicesDep, organization_id: OrganizationId) -> FineTuningJob:
    return FineTuningJob.from_row(services.fine_tuning.resume(organization_id, job_id))


@router.get("/fine_tuning/jobs/{job_id}/events")
def list_events(
    job_id: str,
    services: ServicesDep,
    organization_id: OrganizationId,
    after: str | None = None,
    limit: int | None = None,
) -> ListFineTuningJobEventsResponse:
    page = services.fine_tuning.list_events(organization_id, job_id, after=after, limit=limit)
    return ListFineTuningJobEventsResponse.of(
        [FineTuningJobEvent.from_row(r) for r in page.rows], page.has_more
    )


@router.get("/fine_tuning/jobs/{job_id}/checkpoints")
def list_checkpoints(
    job_id: str,
    services: ServicesDep,
    organization_id: OrganizationId,
    after: str | None = None,
    limit: int | None = None,
) -> ListFineTuningJobCheckpointsResponse:
    page = services.fine_tuning.list_checkpoints(organization_id, job_id, after=after, limit=limit)
    return ListFineTuningJobCheckpointsResponse.of(
        [FineTuningJobCheckpoint.from_row(r) for r in page.rows], page.has_more
    )

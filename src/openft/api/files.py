"""Routes of /v1/files: upload, list, retrieve, download and delete files."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from openft.api import multipart
from openft.api.deps import OrganizationId, ServicesDep
from openft.api.schemas.files import DeleteFileResponse, ListFilesResponse, OpenAIFile

router = APIRouter(tags=["files"])


@router.post("/files")
async def create_file(request: Request, services: ServicesDep, organization_id: OrganizationId) -> OpenAIFile:
    files = services.files
    form = await multipart.read_form(request, "file", files.stage, files.discard)
    assert form.stored is not None
    row = await run_in_threadpool(
        files.create,
        organization_id,
        form.stored,
        filename=form.filename or "upload",
        purpose=form.fields.get("purpose"),
        expires_after_anchor=form.fields.get("expires_after[anchor]"),
        expires_after_seconds=form.fields.get("expires_after[seconds]"),
    )
    return OpenAIFile.from_row(row)


@router.get("/files")
def list_files(
    services: ServicesDep,
    organization_id: OrganizationId,
    purpose: str | None = None,
    limit: int = 10000,
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
) -> ListFilesResponse:
    rows, has_more = services.files.list(
        organization_id, purpose=purpose, limit=limit, order=order, after=after
    )
    return ListFilesResponse.of([OpenAIFile.from_row(r) for r in rows], has_more)


@router.get("/files/{file_id}")
def retrieve_file(file_id: str, services: ServicesDep, organization_id: OrganizationId) -> OpenAIFile:
    return OpenAIFile.from_row(services.files.get(organization_id, file_id))


@router.get("/files/{file_id}/content")
def download_file(file_id: str, services: ServicesDep, organization_id: OrganizationId) -> StreamingResponse:
    chunks = services.files.content(organization_id, file_id)
    return StreamingResponse(chunks, media_type="application/octet-stream")


@router.delete("/files/{file_id}")
def delete_file(file_id: str, services: ServicesDep, organization_id: OrganizationId) -> DeleteFileResponse:
    services.files.delete(organization_id, file_id)
    return DeleteFileResponse(id=file_id, deleted=True)

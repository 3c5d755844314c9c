"""Routes of /v1/uploads: create an upload, add parts, complete or cancel it."""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from openft.api import multipart
from openft.api.deps import OrganizationId, ServicesDep
from openft.api.schemas.uploads import CompleteUploadRequest, CreateUploadRequest, Upload, UploadPart
from openft.services.uploads import UploadView

router = APIRouter(tags=["uploads"])


def _wire(view: UploadView) -> Upload:
    return Upload.from_row(view.row, view.file, status=view.status)


@router.post("/uploads")
def create_upload(
    body: CreateUploadRequest, services: ServicesDep, organization_id: OrganizationId
) -> Upload:
    expires = body.expires_after
    view = services.uploads.create(
        organization_id,
        filename=body.filename,
        purpose=body.purpose,
        bytes=body.bytes,
        mime_type=body.mime_type,
        expires_after_anchor=expires.anchor if expires else None,
        expires_after_seconds=expires.seconds if expires else None,
    )
    return _wire(view)


@router.post("/uploads/{upload_id}/parts")
async def add_upload_part(
    upload_id: str, request: Request, services: ServicesDep, organization_id: OrganizationId
) -> UploadPart:
    uploads = services.uploads
    # Refuse before reading a byte of a part that could never be added, and stop reading one
    # that would take the upload past its declared size.
    room = await run_in_threadpool(uploads.room_for_part, organization_id, upload_id)
    form = await multipart.read_form(request, "data", partial(uploads.stage_part, room=room), uploads.discard)
    assert form.stored is not None
    part = await run_in_threadpool(uploads.add_part, organization_id, upload_id, form.stored)
    return UploadPart.from_row(part)


@router.post("/uploads/{upload_id}/complete")
def complete_upload(
    upload_id: str, body: CompleteUploadRequest, services: ServicesDep, organization_id: OrganizationId
) -> Upload:
    return _wire(services.uploads.complete(organization_id, upload_id, body.part_ids, body.md5))


@router.post("/uploads/{upload_id}/cancel")
def cancel_upload(upload_id: str, services: ServicesDep, organization_id: OrganizationId) -> Upload:
    return _wire(services.uploads.cancel(organization_id, upload_id))

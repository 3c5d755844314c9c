"""FastAPI dependencies: the Services container and the authenticated caller's organization."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from openft.errors import InvalidRequestError
from openft.services.context import Services


def get_services(request: Request) -> Services:
    return request.app.state.services


NUL = "\x00"

ServicesDep = Annotated[Services, Depends(get_services)]


def check_url(request: Request) -> None:
    """Applied to every /v1 router before authentication: no id, cursor, filter or model name can
    hold a NUL character (``%00``), which PostgreSQL text cannot store or compare."""
    for key, value in request.query_params.multi_items():
        if NUL in key or NUL in value:
            param = key.replace(NUL, "%00")
            raise InvalidRequestError(
                f"Invalid query parameter '{param}': it contains a NUL character (%00).", param=param
            )
    path = request.scope["path"]
    if NUL in path:
        raise InvalidRequestError(
            f"Invalid URL path {path.replace(NUL, '%00')!r}: it contains a NUL character (%00). Ids and "
            "model names never do."
        )


async def authenticate(request: Request, services: ServicesDep) -> str:
    """Applied to every /v1 router by create_app; sets ``request.state.organization_id``."""
    organization_id = await run_in_threadpool(
        services.auth.authenticate, request.headers.get("authorization")
    )
    request.state.organization_id = organization_id
    return organization_id


def get_organization_id(request: Request) -> str:
    # authenticate ran first as a router dependency; fall back to it when a route is mounted alone.
    return request.state.organization_id


OrganizationId = Annotated[str, Depends(get_organization_id)]

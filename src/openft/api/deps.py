"""FastAPI dependencies: the Services container and the authenticated caller's scope."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from openft.domain.scope import Scope
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


async def authenticate(request: Request, services: ServicesDep) -> Scope:
    """Applied to every /v1 router by create_app; sets ``request.state.scope`` (organization and
    project) and ``request.state.organization_id``."""
    scope = await run_in_threadpool(
        services.auth.identify, request.headers.get("authorization"), request.headers.get("openai-project")
    )
    request.state.scope = scope
    request.state.organization_id = scope.organization_id
    return scope


def get_scope(request: Request) -> Scope:
    # authenticate ran first as a router dependency
    return request.state.scope


# The caller's scope: every service takes it where it used to take an organization id, so routes
# pass it on unchanged. ``OrganizationId`` is the name the routes were written with.
Caller = Annotated[Scope, Depends(get_scope)]
OrganizationId = Caller

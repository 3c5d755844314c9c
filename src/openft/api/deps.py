"""FastAPI dependencies: the Services container and the authenticated caller's organization."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from openft.services.context import Services


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


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

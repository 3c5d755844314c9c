"""create_app: builds the FastAPI application from Settings; no import-time globals."""

from __future__ import annotations

from fastapi import APIRouter, Depends, FastAPI

from openft import __version__
from openft.api import chat, dashboard, deps, errors, files, fine_tuning, graders, models, uploads
from openft.services.context import Services
from openft.services.inference import ServicesModelResolver
from openft.serving.engine import InferenceEngine
from openft.settings import Settings

# Every resource router, mounted under /v1 behind authentication. Add new resources here
# (fine_tuning.router, models.router, chat.router).
ROUTERS: list[APIRouter] = [
    files.router,
    uploads.router,
    fine_tuning.router,
    graders.router,
    models.router,
]


def create_app(settings: Settings, *, services: Services | None = None) -> FastAPI:
    """Build the app. ``services`` defaults to ``Services.build(settings)`` (migrates the database)."""
    app = FastAPI(
        title="openft", version=__version__, openapi_url="/v1/openapi.json", docs_url=None, redoc_url=None
    )
    app.state.settings = settings
    app.state.services = services if services is not None else Services.build(settings)
    errors.install(app)
    for router in ROUTERS:
        app.include_router(router, prefix="/v1", dependencies=[Depends(deps.authenticate)])
    # Chat completions: the engine imports torch lazily, on the first request for a model.
    app.state.model_resolver = ServicesModelResolver(app.state.services)
    app.state.inference = InferenceEngine(max_adapter_bytes=settings.serving_memory_budget_bytes)
    app.include_router(chat.router, dependencies=[Depends(deps.authenticate)])
    # The dashboard is static and public; it calls the same /v1 API, with the user's key.
    app.include_router(dashboard.router)
    return app

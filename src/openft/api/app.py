"""create_app: builds the FastAPI application from Settings; no import-time globals."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI

from openft import __version__
from openft.api import (
    bodies,
    chat,
    checkpoint_permissions,
    dashboard,
    deps,
    errors,
    files,
    fine_tuning,
    graders,
    metrics,
    models,
    sweeper,
    uploads,
)
from openft.services.context import Services
from openft.services.inference import ServicesModelResolver
from openft.services.webhooks import WebhookDispatcher
from openft.serving.protocols import ChatEngine
from openft.settings import Settings

# Every resource router, mounted under /v1 behind authentication. Add new resources here
# (fine_tuning.router, models.router, chat.router).
ROUTERS: list[APIRouter] = [
    files.router,
    uploads.router,
    fine_tuning.router,
    checkpoint_permissions.router,
    graders.router,
    models.router,
]


def create_app(settings: Settings, *, services: Services | None = None) -> FastAPI:
    """Build the app. ``services`` defaults to ``Services.build(settings)`` (migrates the database)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # While the server runs it also sends webhooks from the outbox (every replica may: the
        # deliveries are leased). In-process test clients that never start the app send none.
        dispatcher = WebhookDispatcher(app.state.services).start() if settings.webhook_delivery else None
        try:
            # and sweeps expired and orphaned storage every OPENFT_SWEEP_INTERVAL_SECONDS
            async with sweeper.lifespan(app):
                yield
        finally:
            if dispatcher is not None:
                dispatcher.stop()

    app = FastAPI(
        title="openft",
        version=__version__,
        openapi_url="/v1/openapi.json",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.services = services if services is not None else Services.build(settings)
    # Added before errors.install so that the request-id middleware wraps its refusals too.
    app.add_middleware(bodies.RequestBodies, settings=lambda: app.state.services.settings)
    errors.install(app)
    for router in ROUTERS:
        app.include_router(
            router, prefix="/v1", dependencies=[Depends(deps.check_url), Depends(deps.authenticate)]
        )
    # Chat completions: the engine imports torch lazily, on the first request for a model.
    app.state.model_resolver = ServicesModelResolver(app.state.services)
    app.state.inference = chat_engine(settings)
    app.include_router(chat.router, dependencies=[Depends(deps.check_url), Depends(deps.authenticate)])
    # The dashboard is static and public; it calls the same /v1 API, with the user's key.
    app.include_router(dashboard.router)
    # /metrics for Prometheus (OPENFT_METRICS_TOKEN protects it), and request latency by route.
    metrics.install(app, app.state.services)
    return app


def chat_engine(settings: Settings) -> ChatEngine:
    """openft's engine, or vLLM's (``OPENFT_SERVING_ENGINE=vllm``); neither imports torch until first used."""
    from openft.serving.engine import InferenceEngine

    own = InferenceEngine(
        max_adapter_bytes=settings.serving_memory_budget_bytes,
        max_batch=settings.serving_max_batch,
        max_queue=settings.serving_max_queue,
        dtype=settings.serving_dtype,
        fast_decode=settings.serving_fast_decode,
    )
    if settings.serving_engine != "vllm":
        return own
    from openft.serving.vllm_engine import VLLMEngine

    # Full fine-tuned models stay on openft's engine: a vLLM engine serves one base model and its adapters.
    return VLLMEngine(
        fallback=own,
        max_num_seqs=settings.serving_max_batch,
        max_in_flight=settings.serving_max_batch + settings.serving_max_queue,
    )

"""GET /metrics in Prometheus' text format (prometheus-client): the fleet read from the database,
and this process's request latency by route."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openft.errors import AuthenticationError
from openft.services.context import Services
from openft.services.operator_metrics import FleetMetrics
from openft.services.operator_metrics import Histogram as Buckets

router = APIRouter()


class FleetCollector(Collector):
    """Reads the fleet's numbers from the database at each scrape."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> Iterator:
        m: FleetMetrics = self.services.operator_metrics.snapshot()
        jobs = GaugeMetricFamily("openft_fine_tuning_jobs", "Fine-tuning jobs by status.", labels=["status"])
        for status, count in m.jobs_by_status.items():
            jobs.add_metric([status], count)
        yield jobs
        yield _histogram(
            "openft_fine_tuning_job_queue_wait_seconds",
            "Time from queued (files validated) to a worker starting the job.",
            m.queue_wait,
        )
        yield _histogram(
            "openft_fine_tuning_job_run_seconds",
            "Time from a job's start to its end, for ended jobs.",
            m.run_time,
        )
        yield CounterMetricFamily(
            "openft_trained_tokens",
            "Tokens trained by succeeded jobs (trained_tokens).",
            value=m.trained_tokens,
        )
        speed = GaugeMetricFamily(
            "openft_fine_tuning_job_tokens_per_second",
            "Training throughput of each running job, at its latest step.",
            labels=["job_id"],
        )
        for job_id, value in sorted(m.tokens_per_second.items()):
            speed.add_metric([job_id], value)
        yield speed
        yield GaugeMetricFamily(
            "openft_workers_busy", "Workers holding a live lease on a job.", value=m.busy_workers
        )
        if m.inventory is not None:
            yield GaugeMetricFamily("openft_workers", "Registered workers.", value=m.inventory.workers)
            yield GaugeMetricFamily("openft_gpus", "GPUs the live workers own.", value=m.inventory.gpus_total)
            yield GaugeMetricFamily("openft_gpus_free", "GPUs no job holds.", value=m.inventory.gpus_free)
        deliveries = GaugeMetricFamily(
            "openft_webhook_deliveries", "Webhook deliveries by state.", labels=["status"]
        )
        for status, count in m.webhook_deliveries.items():
            deliveries.add_metric([status], count)
        yield deliveries
        yield CounterMetricFamily(
            "openft_webhook_delivery_failures",
            "Webhook delivery attempts that failed (non-2xx answer, timeout, refused connection).",
            value=m.webhook_failed_attempts,
        )


def _histogram(name: str, documentation: str, data: Buckets) -> HistogramMetricFamily:
    buckets = [(_le(bound), count) for bound, count in data.buckets] + [("+Inf", data.count)]
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=data.sum)


def _le(bound: float) -> str:
    return str(float(bound))


class RequestLatencyMiddleware:
    """Observes each HTTP request's duration under its route template (not the raw path, whose ids
    would make a series per object). Pure ASGI so streamed responses stay streamed."""

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            self.histogram.labels(scope["method"], route_template(scope), str(status["code"])).observe(
                time.perf_counter() - started
            )


_PARAM = re.compile(r"\{(\w+)(?::\w+)?\}")


def route_template(scope: Scope) -> str:
    """The matched route's template with its router's prefix (``/v1/files/{file_id}``). FastAPI
    gives the route relative to the router it was included from, so the prefix is what the request
    path holds before the route's rendered part."""
    route = scope.get("route")
    template = getattr(route, "path", None)
    if not template:
        return "unmatched"
    params = scope.get("path_params") or {}
    rendered = _PARAM.sub(lambda m: str(params.get(m.group(1), "")), template)
    path = scope.get("path", "")
    prefix = path[: len(path) - len(rendered)] if rendered and path.endswith(rendered) else ""
    return prefix + template


def install(app, services: Services) -> None:
    """A registry per app (no import-time globals): the fleet collector and request latency."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(FleetCollector(services))
    latency = Histogram(
        "openft_http_request_duration_seconds",
        "HTTP request latency by method, route template and status code.",
        ["method", "route", "status"],
        registry=registry,
    )
    app.state.metrics_registry = registry
    app.add_middleware(RequestLatencyMiddleware, histogram=latency)
    app.include_router(router)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    token = request.app.state.settings.metrics_token
    if token is not None:
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not secrets.compare_digest(given, token):
            raise AuthenticationError("GET /metrics needs Authorization: Bearer <OPENFT_METRICS_TOKEN>.")
    body = await run_in_threadpool(generate_latest, request.app.state.metrics_registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)

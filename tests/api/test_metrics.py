"""GET /metrics: Prometheus text that prometheus-client's own parser reads back, with the fleet's
numbers from the database and this process's request latency by route."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from openft.services.webhooks import WebhookDispatcher
from openft.services.workers import CUDA, Device, RunningJob, WorkerInfo
from openft.settings import DEFAULT_BASE_MODEL, SMOLLM2_PACKAGE_SOURCE, Settings

TRAIN = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n' * 10


@pytest.fixture
def settings(tmp_path, monkeypatch, database_url) -> Settings:
    home = tmp_path / "openft-home"
    monkeypatch.setenv("OPENFT_HOME", str(home))
    return Settings(
        home=home,
        database_url=database_url,  # the aggregates run on SQLite and PostgreSQL
        base_models={DEFAULT_BASE_MODEL: SMOLLM2_PACKAGE_SOURCE},
        metrics_token="scrape-me",
    )


def _scrape(app) -> dict[str, list]:
    with TestClient(app) as http:  # also starts the lifespan, as a real server would
        response = http.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    families = {f.name: f.samples for f in text_string_to_metric_families(response.text)}
    return families


def _value(samples, name: str, **labels) -> float:
    (found,) = [
        s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    return found


def _job(services, org: str):
    file = services.files.create_from_bytes(org, "t.jsonl", "fine-tune", TRAIN)
    return services.fine_tuning.create(org, model=DEFAULT_BASE_MODEL, training_file=file.id)


def test_metrics_parse_and_report_jobs_throughput_tokens_latency_and_webhooks(app, services, client):
    org = services.organizations.ensure_default().id
    runtime = services.runtime
    services.webhooks.add_endpoint(org, "http://127.0.0.1:9/refused")
    # One job succeeds, one runs (with a throughput), one waits in validation, one is cancelled.
    done, running = _job(services, org), _job(services, org)
    for claim in [runtime.claim("worker-a", 60.0), runtime.claim("worker-a", 60.0)]:
        runtime.mark_validated(
            claim.job_id, claim.generation, hyperparameters=claim.job.hyperparameters, stats={}
        )
    claims = [runtime.claim("worker-a", 60.0), runtime.claim("worker-b", 60.0)]
    runtime.record_metrics(
        claims[1].job_id,
        claims[1].generation,
        step=1,
        total_steps=3,
        data={"train_loss": 1.0},
        estimated_finish=None,
        tokens_per_second=1234.5,
    )
    (services.settings.models_dir / "jobs" / done.id).mkdir(parents=True)
    assert runtime.succeed(
        done.id,
        claims[0].generation,
        artifact_path=f"jobs/{done.id}",
        trained_tokens=777,
        result_csv=b"step\n",
        final_step=3,
        final_metrics={},
    )
    _job(services, org)
    cancelled = _job(services, org)
    client.fine_tuning.jobs.cancel(cancelled.id)
    client.files.list()
    assert WebhookDispatcher(services).run_once() == 2  # succeeded + cancelled, both refused
    # The registry: a GPU worker holding one of its two GPUs for the running job, and a CPU worker.
    gpus = tuple(Device(CUDA, "NVIDIA H200", index, 141 << 30) for index in (0, 1))
    services.workers.register(
        WorkerInfo("worker-b", "gpu-host", 1, gpus, slots=2, running=(RunningJob(running.id, (1,)),))
    )
    services.workers.register(WorkerInfo("worker-c", "cpu-host", 2, (Device("cpu", "EPYC"),), slots=1))

    families = _scrape(app)
    jobs = families["openft_fine_tuning_jobs"]
    assert {s.labels["status"]: s.value for s in jobs} == {
        "validating_files": 1,
        "queued": 0,
        "running": 1,
        "paused": 0,
        "succeeded": 1,
        "failed": 0,
        "cancelled": 1,
    }
    assert _value(families["openft_trained_tokens"], "openft_trained_tokens_total") == 777
    speed = families["openft_fine_tuning_job_tokens_per_second"]
    assert _value(speed, "openft_fine_tuning_job_tokens_per_second", job_id=running.id) == 1234.5
    wait = families["openft_fine_tuning_job_queue_wait_seconds"]
    assert _value(wait, "openft_fine_tuning_job_queue_wait_seconds_count") == 2  # both started
    assert _value(wait, "openft_fine_tuning_job_queue_wait_seconds_bucket", le="60.0") == 2
    run = families["openft_fine_tuning_job_run_seconds"]
    assert _value(run, "openft_fine_tuning_job_run_seconds_count") == 1  # only the finished one ran
    assert _value(families["openft_workers_busy"], "openft_workers_busy") == 1  # worker-b's live lease
    assert _value(families["openft_workers"], "openft_workers") == 2
    assert _value(families["openft_gpus"], "openft_gpus") == 2
    assert _value(families["openft_gpus_free"], "openft_gpus_free") == 1
    failures = families["openft_webhook_delivery_failures"]
    assert _value(failures, "openft_webhook_delivery_failures_total") == 2
    assert _value(families["openft_webhook_deliveries"], "openft_webhook_deliveries", status="pending") == 2
    latency = families["openft_http_request_duration_seconds"]
    assert (
        _value(
            latency,
            "openft_http_request_duration_seconds_count",
            method="GET",
            route="/v1/files",
            status="200",
        )
        == 1
    )
    assert (
        _value(
            latency,
            "openft_http_request_duration_seconds_count",
            method="POST",
            route="/v1/fine_tuning/jobs/{job_id}/cancel",
            status="200",
        )
        == 1
    )


def test_metrics_need_the_token_when_one_is_set(app):
    with TestClient(app) as http:
        assert http.get("/metrics").status_code == 401
        assert http.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401

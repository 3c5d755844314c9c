"""Fixtures for durability tests: a fresh PostgreSQL schema, short leases, the SDK, worker processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import openai
import pytest
from fleet import WorkerProcess
from ledger import BASE
from postgres_schema import schema_url
from starlette.testclient import TestClient

from openft.api.app import create_app
from openft.settings import Settings


@pytest.fixture
def database_url() -> Iterator[str]:
    """A new schema on the local PostgreSQL, dropped afterwards: the multi-worker deployment."""
    # A frozen (SIGSTOPped) worker must not hold row locks forever: PostgreSQL ends a session left
    # idle inside a transaction, as a production setup should (see docs/durability.md).
    yield from schema_url("idle_in_transaction_session_timeout=5000")


@pytest.fixture
def settings(tmp_path, database_url, tiny_model_dir) -> Settings:
    # Leases short enough that a lost worker is noticed in seconds; time-based checkpoints every
    # second, so a kill mid-epoch has something to resume from.
    return Settings(
        home=tmp_path / "home",
        database_url=database_url,
        base_models={BASE: str(tiny_model_dir)},
        lease_seconds=3.0,
        heartbeat_seconds=0.5,
        poll_seconds=0.2,
        checkpoint_interval_seconds=1.0,
        max_attempts=3,
    )


@pytest.fixture
def app(settings):
    app = create_app(settings)  # migrates the schema before any worker process starts
    yield app
    app.state.services.close()


@pytest.fixture
def services(app):
    return app.state.services


@pytest.fixture
def client(app) -> Iterator[openai.OpenAI]:
    http = TestClient(app, base_url="http://testserver", raise_server_exceptions=True)
    yield openai.OpenAI(base_url="http://testserver/v1", api_key="test", max_retries=0, http_client=http)
    http.close()


@pytest.fixture
def start_worker(settings, tmp_path) -> Iterator[Callable[..., WorkerProcess]]:
    """``start_worker(burst=False, env=None)``: a real ``openft worker`` process (``env`` adds to its
    environment); all are killed at teardown."""
    started: list[WorkerProcess] = []

    def start(
        burst: bool = False, settings: Settings = settings, env: dict[str, str] | None = None
    ) -> WorkerProcess:
        worker = WorkerProcess(settings, tmp_path / f"worker-{len(started)}.log", burst=burst, env=env)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()

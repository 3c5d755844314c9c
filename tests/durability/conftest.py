"""Fixtures for durability tests: a fresh PostgreSQL schema, short leases, the SDK, worker processes."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator

import openai
import psycopg
import pytest
from fleet import WorkerProcess
from ledger import BASE
from starlette.testclient import TestClient

from openft.api.app import create_app
from openft.settings import Settings

POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def database_url() -> Iterator[str]:
    """A new schema on the local PostgreSQL, dropped afterwards: the multi-worker deployment."""
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(
            f"PostgreSQL is not reachable at 127.0.0.1:5432 (database 'test', user 'postgres'): {exc}"
        )
    schema = "t_" + secrets.token_hex(6)
    with admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            # A frozen (SIGSTOPped) worker must not hold row locks forever: PostgreSQL ends a session
            # left idle inside a transaction, as a production setup should (see docs/durability.md).
            timeout = "-cidle_in_transaction_session_timeout%3D5000"
            yield f"{POSTGRES_ADMIN_URL}?options=-csearch_path%3D{schema}%20{timeout}"
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


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
    """``start_worker(burst=False)``: a real ``openft worker`` process; all are killed at teardown."""
    started: list[WorkerProcess] = []

    def start(burst: bool = False, settings: Settings = settings) -> WorkerProcess:
        worker = WorkerProcess(settings, tmp_path / f"worker-{len(started)}.log", burst=burst)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()

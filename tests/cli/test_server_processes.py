"""Real ``openft serve`` and ``openft api`` processes: however they stop (SIGTERM, SIGINT, SIGKILL),
the worker beside them stops too, draining its job back to the queue; the API's validator
validates and trains nothing."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest
from starlette.testclient import TestClient

from openft.api.app import create_app
from openft.settings import Settings
from openft.training.launch import find_tcmalloc

# The process helpers and the tiny job are shared with the durability tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "durability"))

from fleet import alive, children, process_env, training_children, wait_for  # noqa: E402
from ledger import BASE, create_job, messages, metrics_steps  # noqa: E402


@pytest.fixture
def settings(tmp_path, tiny_model_dir) -> Settings:
    home = tmp_path / "home"
    return Settings(
        home=home,
        database_url=f"sqlite:///{home / 'openft.db'}",
        base_models={BASE: str(tiny_model_dir)},
        heartbeat_seconds=0.5,
        poll_seconds=0.2,
        checkpoint_interval_seconds=1.0,
    )


@pytest.fixture
def app(settings):
    app = create_app(settings)  # the schema exists before the server process starts
    yield app
    app.state.services.close()


@pytest.fixture
def services(app):
    return app.state.services


@pytest.fixture
def client(app) -> Iterator[openai.OpenAI]:
    """The SDK on an in-process app over the same database as the server process."""
    http = TestClient(app, base_url="http://testserver", raise_server_exceptions=True)
    yield openai.OpenAI(base_url="http://testserver/v1", api_key="test", max_retries=0, http_client=http)
    http.close()


@pytest.fixture
def start(settings, tmp_path) -> Iterator[Callable[..., subprocess.Popen]]:
    """``start("serve")``: ``openft serve`` on a port the kernel picks (``start("api", NAME="value")``: with
    that in its environment); killed, with what it started, at teardown."""
    started: list[subprocess.Popen] = []
    seen: set[int] = set()

    def run(*args: str, **env: str) -> subprocess.Popen:
        log = open(tmp_path / f"{args[0]}-{len(started)}.log", "ab")  # noqa: SIM115 - closed by Popen's owner
        proc = subprocess.Popen(
            [sys.executable, "-m", "openft.cli.main", *args],
            env={**process_env(settings), "OPENFT_PORT": "0", **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        started.append(proc)
        worker = wait_for(lambda: children(proc.pid), what=f"openft {args[0]}'s worker")[0]
        seen.add(worker)
        return proc

    yield run
    for proc in started:
        for pid in seen:
            if alive(pid):
                for child in training_children(pid):
                    _kill(child)
                _kill(pid)
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def _kill(pid: int) -> None:
    import contextlib
    import os

    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _worker(proc: subprocess.Popen) -> int:
    (pid,) = children(proc.pid)
    return pid


def _training(client, services, worker: int):
    job = create_job(client, n=12, n_epochs=20, seed=5)  # long enough to be stopped mid-run
    wait_for(lambda: metrics_steps(services, job.id), timeout=180, what="a training step")
    (child,) = wait_for(lambda: training_children(worker), what="the training child")
    return job, child


def _drained(client, services, job_id: str) -> None:
    assert client.fine_tuning.jobs.retrieve(job_id).status == "queued"
    texts = messages(services, job_id)
    assert any("requeued (the worker is shutting down)" in m for m in texts), texts
    assert not any("was lost" in m for m in texts)


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.skipif(
    find_tcmalloc() is None, reason="tcmalloc is not installed (Debian: libtcmalloc-minimal4)"
)
def test_serve_runs_with_tcmalloc_preloaded_unless_told_not_to(start):
    serve = start("serve")
    assert "tcmalloc" in _maps(serve.pid)  # the same process, started over with tcmalloc preloaded
    plain = start("api", OPENFT_TCMALLOC="0")
    assert "tcmalloc" not in _maps(plain.pid)


def test_sigterm_drains_the_worker_then_serve_exits(start, client, services):
    serve = start("serve")
    worker = _worker(serve)
    job, child = _training(client, services, worker)

    serve.send_signal(signal.SIGTERM)
    assert serve.wait(timeout=180) == 0
    assert not alive(worker) and not alive(child)
    _drained(client, services, job.id)
    assert services.workers.live() == []


def test_sigkill_of_serve_makes_its_worker_drain_and_exit(start, client, services):
    serve = start("serve")
    worker = _worker(serve)
    job, child = _training(client, services, worker)

    serve.kill()
    serve.wait(timeout=30)
    # PR_SET_PDEATHSIG: the orphaned worker got SIGTERM and drains as if asked to.
    wait_for(lambda: not alive(worker), timeout=180, what="the orphaned worker to exit")
    assert not alive(child)
    _drained(client, services, job.id)


def test_sigint_stops_serve_and_its_worker(start):
    serve = start("serve")
    worker = _worker(serve)
    serve.send_signal(signal.SIGINT)
    assert serve.wait(timeout=120) == 0
    assert not alive(worker)


def test_api_runs_a_validator_that_trains_nothing_and_dies_with_it(start, client, services):
    api = start("api")
    validator = _worker(api)
    with open(f"/proc/{validator}/cmdline", "rb") as cmdline:
        assert b"--validate-only" in cmdline.read()

    bad = b'{"messages": [{"role": "user", "content": "no answer"}]}\n' * 12
    bad_file = client.files.create(file=("bad.jsonl", bad), purpose="fine-tune")
    failed = client.fine_tuning.jobs.create(model=BASE, training_file=bad_file.id)
    good = create_job(client, n=12, n_epochs=1, seed=7)
    wait_for(lambda: client.fine_tuning.jobs.retrieve(good.id).status == "queued", what="validation")
    failed = client.fine_tuning.jobs.retrieve(failed.id)
    assert (failed.status, failed.error.code) == ("failed", "invalid_training_file")
    capacity = services.workers.capacity()
    assert (capacity.workers, capacity.training_workers) == (1, 0)

    api.kill()
    api.wait(timeout=30)
    wait_for(lambda: not alive(validator), timeout=60, what="the validator to exit")
    # Nothing trained the good job: no worker with training slots ever ran.
    assert client.fine_tuning.jobs.retrieve(good.id).status == "queued"


@pytest.mark.parametrize(
    ("gpus", "message"), [("999", "no visible GPU with index 999"), ("first", "'all', 'none' or GPU indices")]
)
def test_serve_refuses_gpus_it_does_not_have_before_starting_anything(tmp_path, gpus, message):
    from click.testing import CliRunner

    from openft.cli.main import main

    result = CliRunner().invoke(main, ["serve", "--gpus", gpus], env={"OPENFT_HOME": str(tmp_path / "home")})
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "home").exists()

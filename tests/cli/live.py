"""A live openft for client tests: the real app under uvicorn on a free port, and a stand-in worker.

Shared by ``tests/cli`` and ``tests/dashboard`` (which puts this folder on ``sys.path``).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import uvicorn
from click.testing import CliRunner, Result
from fastapi import FastAPI

from openft.api.app import create_app
from openft.cli.main import main
from openft.settings import Settings


@dataclass
class LiveServer:
    base_url: str
    app: Any

    @property
    def services(self) -> Any:
        return self.app.state.services

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key="test", max_retries=0)


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Run ``app`` in a thread; yields its base URL. The socket is bound before the thread starts,
    so clients may connect at once: the kernel queues them until uvicorn accepts."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def build_app(home: Path) -> FastAPI:
    return create_app(Settings(home=home, database_url=f"sqlite:///{home / 'openft.db'}"))


def write_chat_file(path: Path, n: int = 12) -> Path:
    lines = [
        {
            "messages": [
                {"role": "user", "content": f"What is {i} + {i}?"},
                {"role": "assistant", "content": str(2 * i)},
            ]
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


class Openft:
    """Runs ``openft ARGS`` in-process against the live server, as a user would type it."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.runner = CliRunner()

    def __call__(self, *args: str, expect: int | None = 0, input: str | None = None) -> Result:
        env = {"OPENAI_BASE_URL": self.base_url, "OPENAI_API_KEY": "test"}
        result = self.runner.invoke(
            main, [str(a) for a in args], env=env, input=input, catch_exceptions=False
        )
        if expect is not None:
            assert result.exit_code == expect, (
                f"openft {' '.join(args)} -> {result.exit_code}\n{result.output}"
            )
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json").stdout)


class JobDriver:
    """Plays the worker's part for one job through the service layer, so tests choose each event.

    It claims the oldest claimable job: create one job at a time before driving it.
    """

    def __init__(self, services: Any, job_id: str, total_steps: int = 4) -> None:
        self.runtime = services.runtime
        self.job_id = job_id
        self.total_steps = total_steps
        self.generation = 0

    def start(self) -> JobDriver:
        claim = self.runtime.claim("test-worker", 60.0)
        assert claim is not None and claim.job_id == self.job_id and claim.phase == "validate"
        hyperparameters = {"n_epochs": 1, "batch_size": 3, "learning_rate_multiplier": 1.0}
        stats = {"n_examples": 12, "billable_tokens": 120, "total_steps": self.total_steps}
        assert self.runtime.mark_validated(
            self.job_id, claim.generation, hyperparameters=hyperparameters, stats=stats
        )
        claim = self.runtime.claim("test-worker", 60.0)
        assert claim is not None and claim.phase == "train"
        self.generation = claim.generation
        return self

    def step(self, step: int, train_loss: float, **extra: float) -> None:
        data = {"step": step, "total_steps": self.total_steps, "train_loss": train_loss, **extra}
        assert self.runtime.record_metrics(
            self.job_id,
            self.generation,
            step=step,
            total_steps=self.total_steps,
            data=data,
            estimated_finish=None,
        )

    def checkpoint(self, step: int, train_loss: float, tmp_path: Path) -> str:
        name = self.runtime.record_checkpoint(
            self.job_id,
            self.generation,
            step=step,
            metrics={"step": step, "train_loss": train_loss},
            path=str(tmp_path / f"ckpt-{step}"),
        )
        assert name is not None
        return name

    def succeed(self, tmp_path: Path) -> str:
        name = self.runtime.succeed(
            self.job_id,
            self.generation,
            artifact_path=str(tmp_path / "final"),
            trained_tokens=480,
            result_csv=b"step,train_loss\n1,1.0\n",
            final_step=self.total_steps,
            final_metrics={"step": self.total_steps, "train_loss": 0.5},
        )
        assert name is not None
        return name

    def fail(self, message: str) -> None:
        assert self.runtime.fail(self.job_id, self.generation, code="training_failed", message=message)


def create_job(server: LiveServer, chat_file: Path) -> str:
    client = server.client()
    training = client.files.create(file=chat_file, purpose="fine-tune")
    return client.fine_tuning.jobs.create(model="SmolLM2-135M-Instruct", training_file=training.id).id

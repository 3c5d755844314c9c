"""Real ``openft worker`` and API processes for durability tests: start, find their children, kill."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx2
import openai

from openft.settings import Settings

T = TypeVar("T")
API_SCRIPT = Path(__file__).with_name("api_process.py")


def wait_for(predicate: Callable[[], T], timeout: float = 60.0, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(0.1)


def process_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a process read ``settings`` through ``Settings.from_env``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENFT_")}
    env.update(
        OPENFT_HOME=str(settings.home),
        OPENFT_DATABASE_URL=settings.database_url,
        OPENFT_BASE_MODELS=json.dumps(settings.base_models),
        OPENFT_LEASE_SECONDS=str(settings.lease_seconds),
        OPENFT_HEARTBEAT_SECONDS=str(settings.heartbeat_seconds),
        OPENFT_POLL_SECONDS=str(settings.poll_seconds),
        OPENFT_CHECKPOINT_INTERVAL_SECONDS=str(settings.checkpoint_interval_seconds),
        OPENFT_MAX_ATTEMPTS=str(settings.max_attempts),
        OPENFT_WEBHOOK_RETRY_SECONDS=",".join(str(s) for s in settings.webhook_retry_seconds),
        OPENFT_WEBHOOK_TIMEOUT_SECONDS=str(settings.webhook_timeout_seconds),
        OPENFT_WEBHOOK_POLL_SECONDS=str(settings.webhook_poll_seconds),
        OPENFT_LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    if settings.storage_url is not None:  # AWS_* credentials pass through from this environment
        env["OPENFT_STORAGE_URL"] = settings.storage_url
        env["OPENFT_S3_ENDPOINT_URL"] = settings.s3_endpoint_url or ""
    return env


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone: it can no longer write anything)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry))
    return found


class WorkerProcess:
    """``python -m openft.cli.main worker`` with the test's settings; logs to ``log_path``."""

    def __init__(
        self, settings: Settings, log_path: Path, *, burst: bool = False, env: dict[str, str] | None = None
    ) -> None:
        self.log_path = log_path
        argv = [sys.executable, "-m", "openft.cli.main", "worker", *(["--burst"] if burst else [])]
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                env={**process_env(settings), **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.seen_children: set[int] = set()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def child(self) -> int | None:
        """The training child's pid while there is one."""
        pids = children(self.pid)
        self.seen_children.update(pids)
        return pids[0] if pids else None

    def signal(self, sig: signal.Signals) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Test teardown: kill the worker and anything it left running."""
        for pid in [*self.seen_children, *children(self.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


class ApiProcess:
    """The API under uvicorn on a Unix socket (no port to pick), so a test can SIGKILL and restart it."""

    def __init__(self, settings: Settings, socket_path: Path, log_path: Path) -> None:
        self.settings = settings
        self.socket_path = socket_path
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.socket_path.unlink(missing_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(API_SCRIPT), str(self.socket_path)],
                env=process_env(self.settings),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        probe = self.client()
        wait_for(lambda: self._answers(probe), timeout=60, what="the API answering on its socket")

    def _answers(self, client: openai.OpenAI) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.log_path.read_text(errors="replace")
        try:
            client.models.list()
        except openai.APIConnectionError:
            return False
        return True

    def client(self) -> openai.OpenAI:
        http = httpx2.Client(transport=httpx2.HTTPTransport(uds=str(self.socket_path)), timeout=30)
        return openai.OpenAI(base_url="http://openft/v1", api_key="test", max_retries=0, http_client=http)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def training_children(pid: int) -> list[int]:
    """Children of ``pid`` that run the training child module."""
    found = []
    for child in children(pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as cmdline:
                if b"openft.training.child" in cmdline.read():
                    found.append(child)
        except FileNotFoundError:
            continue
    return found

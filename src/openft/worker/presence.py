"""The worker's row in the workers registry: written at start, kept fresh, deleted at a clean stop."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from openft.services.workers import CPU, Device, WorkerInfo, WorkerRegistry

log = logging.getLogger(__name__)


def describe_cpu() -> Device:
    """This machine's CPU as a registry device: its model name, core count and memory."""
    name = "CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                name = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = None
    return Device(kind=CPU, name=f"{name} ({os.cpu_count()} cores)", memory_bytes=memory)


class Presence:
    """Registers the worker on enter; a thread refreshes its row every heartbeat, and at once after
    ``touch()`` (a job started or ended); the row is deleted on exit. Registry writes never stop
    the worker: a failed one is logged and tried again at the next heartbeat."""

    def __init__(
        self, registry: WorkerRegistry, describe: Callable[[], WorkerInfo], *, heartbeat_seconds: float
    ) -> None:
        self.registry = registry
        self.describe = describe
        self.heartbeat_seconds = heartbeat_seconds
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-presence", daemon=True)

    def __enter__(self) -> Presence:
        try:
            self.registry.register(self.describe())
        except Exception:
            log.exception("could not register this worker; retrying with its heartbeat")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join()
        try:
            self.registry.deregister(self.describe().id)
        except Exception:
            log.exception("could not remove this worker from the registry; it ages out after a lease")

    def touch(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.heartbeat_seconds)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.registry.heartbeat(self.describe())
            except Exception:
                log.exception("worker heartbeat failed")

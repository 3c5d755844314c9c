"""Retries the worker's database writes through transient failures, such as a dropped connection."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class PatientRuntime:
    """Wraps ``JobRuntime``: a call that fails for any reason but a lost lease is retried with
    backoff. A worker must not die, leaving its job to the lease timeout, because PostgreSQL closed
    one connection (a restart, a failover, an idle-in-transaction timeout after a long pause).

    The retried writes are idempotent (step events and checkpoints are keyed by step; status
    changes are compare-and-set), so a retry after a commit whose answer was lost writes nothing twice.
    """

    def __init__(self, runtime: Any, *, attempts: int = 5, backoff_seconds: float = 0.5) -> None:
        self.runtime = runtime
        self.attempts = attempts
        self.backoff_seconds = backoff_seconds

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.runtime, name)
        if not callable(method):
            return method
        return self._patient(name, method)

    def _patient(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        from openft.services.job_runtime import LeaseLost

        def call(*args: Any, **kwargs: Any) -> Any:
            for attempt in range(1, self.attempts + 1):
                try:
                    return method(*args, **kwargs)
                except LeaseLost:
                    raise
                except Exception:
                    if attempt == self.attempts:
                        raise
                    delay = self.backoff_seconds * 2 ** (attempt - 1)
                    log.warning(
                        "runtime.%s failed (attempt %d); retrying in %.1fs",
                        name,
                        attempt,
                        delay,
                        exc_info=True,
                    )
                    time.sleep(delay)
            raise AssertionError("unreachable")

        return call

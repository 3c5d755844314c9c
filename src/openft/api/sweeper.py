"""The API process's background storage sweep, run every ``sweep_interval_seconds`` (0: never).

Every API replica runs one; the sweep itself is safe to run on several at once (see
services/storage.py). A sweep that fails is logged and tried again at the next interval.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

log = logging.getLogger(__name__)


async def sweep_periodically(app: FastAPI) -> None:
    while True:
        services = app.state.services
        try:
            await run_in_threadpool(services.storage.sweep)
        except Exception:
            log.exception(
                "storage sweep failed; trying again in %s s", services.settings.sweep_interval_seconds
            )
        await asyncio.sleep(services.settings.sweep_interval_seconds)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    if app.state.services.settings.sweep_interval_seconds <= 0:
        yield
        return
    task = asyncio.create_task(sweep_periodically(app))
    try:
        yield
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task

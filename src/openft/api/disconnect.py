"""Notice a client that goes away while its request is still being answered."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
from fastapi import Request

T = TypeVar("T")


async def unless_disconnected(
    request: Request, work: Awaitable[T], on_disconnect: Callable[[], None]
) -> T | None:
    """Await ``work``; if the client disconnects first, call ``on_disconnect``, drop the work and return None.

    Once the body is read, the only message left for the request is ``http.disconnect``, so a task waits for
    it beside the work: whichever ends first ends the other.
    """
    result: T | None = None
    async with anyio.create_task_group() as group:

        async def watch() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            on_disconnect()
            group.cancel_scope.cancel()

        group.start_soon(watch)
        result = await work
        group.cancel_scope.cancel()
    return result

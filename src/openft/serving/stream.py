"""One generation's events, handed from the batch loop's thread to a reader that blocks (a thread) or awaits.

Closing the stream before its end is how a reader says it went away: the batch loop sees ``cancelled`` at
its next step and frees the request's rows.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable, Iterable

from openft.serving.protocols import GenerationEvent

_END = object()


class EventStream:
    def __init__(self) -> None:
        self._items: deque = deque()
        self._ready = threading.Condition()
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future] | None = None
        self._ended = False
        self.cancelled = False
        # Called once when a reader closes the stream before its end (the engine wakes its loop).
        self.on_cancel: Callable[[], None] | None = None

    # -- the producer (the batch loop) ---------------------------------------------------------------------

    def put(self, event: GenerationEvent, *, wake: bool = True) -> None:
        """Add an event; with ``wake=False`` the reader hears of it at the next ``wake_readers``."""
        self._push(event, wake)

    def end(self, error: BaseException | None = None, *, wake: bool = True) -> None:
        """No more events; with ``error``, the reader raises it instead of ending normally."""
        self._push(error if error is not None else _END, wake)

    def _push(self, item: object, wake: bool) -> None:
        with self._ready:
            self._items.append(item)
        if wake:
            wake_readers([self])

    # -- readers -------------------------------------------------------------------------------------------

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> GenerationEvent:
        with self._ready:
            while not self._items:
                self._ready.wait()
            item = self._take()
        return self._unwrap(item, StopIteration)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> GenerationEvent:
        while True:
            with self._ready:
                if self._items:
                    item = self._take()
                    break
                loop = asyncio.get_running_loop()
                future = loop.create_future()
                self._waiter = (loop, future)
            await future
        return self._unwrap(item, StopAsyncIteration)

    def close(self) -> None:
        """The reader is gone. Before the end, the generation is cancelled; after it, nothing happens."""
        with self._ready:
            if self._ended or self.cancelled:
                return
            self.cancelled = True
            on_cancel = self.on_cancel
        if on_cancel is not None:
            on_cancel()

    async def aclose(self) -> None:
        self.close()

    def _take(self) -> object:
        item = self._items[0]
        if item is _END or isinstance(item, BaseException):
            # Left in place: every later read ends (or raises) the same way.
            self._ended = True
            return item
        return self._items.popleft()

    @staticmethod
    def _unwrap(item: object, stop: type[Exception]) -> GenerationEvent:
        if item is _END:
            raise stop
        if isinstance(item, BaseException):
            raise item
        return item  # type: ignore[return-value]


def wake_readers(streams: Iterable[EventStream]) -> None:
    """Tell the readers of ``streams`` that events are there: one wake-up per event loop, not one per event.

    A decode step adds an event to every running stream; waking each reader on its own would hand the GIL
    (or the event loop's self-pipe) back and forth once per stream and step.
    """
    futures: dict[asyncio.AbstractEventLoop, list[asyncio.Future]] = {}
    for stream in streams:
        with stream._ready:
            if not stream._items:
                continue
            stream._ready.notify()
            waiter, stream._waiter = stream._waiter, None
        if waiter is not None:
            futures.setdefault(waiter[0], []).append(waiter[1])
    for loop, waiting in futures.items():
        loop.call_soon_threadsafe(_resolve, waiting)


def _resolve(futures: list[asyncio.Future]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)

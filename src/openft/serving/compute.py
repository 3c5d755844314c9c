"""The one thread that runs an engine's torch work: loading models and every batch loop's turns.

Why one: torch's CPU kernels run on OpenMP, and every thread that runs a parallel kernel gets a team of
worker threads of its own, kept until that thread ends. GNU OpenMP counts them all, and once they outnumber
the cores its workers stop spinning between kernels and sleep instead, so each of the hundreds of kernels in
a decode step pays a wake-up: measured on 2 cores, a SmolLM2 decode step took 43 ms on a second thread
against 26 ms on the only one. Loading a model on a request's thread and decoding on another is enough to
cross that line, so the engine does both here, and its batch loops (one per loaded model) take turns: one
prefill-or-decode turn each, round robin, which is what the cores could do anyway.

The thread starts with the first piece of work and ends when there is none, or at the interpreter's exit
after the turn it is in (a thread left inside a torch kernel while the process exits aborts it).
"""

from __future__ import annotations

import atexit
import threading
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Turns(Protocol):
    def turn(self) -> bool:
        """Run one step of work; True when there may be more."""


class ComputeThread:
    def __init__(self, name: str = "openft-compute") -> None:
        self.name = name
        self._ready = threading.Condition()
        self._calls: deque[tuple[Callable[[], Any], Future]] = deque()
        self._woken: list[Turns] = []  # loops with work, in the order they take turns
        self._thread: threading.Thread | None = None
        self._started: threading.Thread | None = None  # the latest thread, joined at exit even as it ends
        self._closing = False
        reference = weakref.ref(self)
        atexit.register(lambda: (compute := reference()) is not None and compute.close())

    def close(self, timeout: float = 10) -> None:
        """Stop after the current turn and wait for the thread to end; no more work is taken."""
        with self._ready:
            self._closing = True
            thread = self._started
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the compute thread, between turns, and return what it returns (or raise what it raises)."""
        if threading.current_thread() is self._thread:
            return fn()
        future: Future = Future()
        with self._ready:
            self._calls.append((fn, future))
            self._start_or_notify()
        return future.result()

    def wake(self, loop: Turns) -> None:
        """``loop`` has work: give it turns until it says it has none."""
        with self._ready:
            if all(woken is not loop for woken in self._woken):
                self._woken.append(loop)
            self._start_or_notify()

    def _start_or_notify(self) -> None:
        # Called with the condition held.
        if self._closing:
            raise RuntimeError("The engine is closing: the process is exiting.")
        if self._thread is None:
            self._thread = self._started = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        self._ready.notify()

    def _run(self) -> None:
        while True:
            with self._ready:
                if self._closing or (not self._calls and not self._woken):
                    self._thread = None
                    return
                calls, self._calls = self._calls, deque()
                loops, self._woken = self._woken, []
            for fn, future in calls:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn())
                    except BaseException as exc:  # handed to the caller, who raises it
                        future.set_exception(exc)
            # A loop's turn takes its own lock; this thread never holds its condition meanwhile.
            again = [loop for loop in loops if loop.turn()]
            if again:
                with self._ready:
                    self._woken[:0] = [loop for loop in again if all(w is not loop for w in self._woken)]

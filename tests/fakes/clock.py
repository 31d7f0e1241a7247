"""A fake event loop clock for long-run tests: timers run when the test advances time.

Only the parts of asyncio.AbstractEventLoop the forwarding code uses: time(), call_at(),
call_later(), call_soon(). `live()` counts timers scheduled and neither run nor cancelled, so
a test can assert that they stay bounded.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any


class FakeHandle:
    def __init__(self, loop: FakeLoop, when: float) -> None:
        self._loop = loop
        self.when = when
        self.cancelled = False
        self.done = False

    def cancel(self) -> None:
        if not self.cancelled and not self.done:
            self.cancelled = True
            self._loop._live -= 1

    def get_loop(self) -> FakeLoop:
        return self._loop


class FakeLoop:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._heap: list[tuple[float, int, FakeHandle, Callable[..., Any], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self._live = 0
        self.peak = 0
        self.ran = 0

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> FakeHandle:
        handle = FakeHandle(self, when)
        heapq.heappush(self._heap, (when, next(self._seq), handle, callback, args))
        self._live += 1
        self.peak = max(self.peak, self._live)
        return handle

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> FakeHandle:
        return self.call_at(self.now + delay, callback, *args)

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> FakeHandle:
        return self.call_at(self.now, callback, *args)

    def live(self) -> int:
        return self._live

    def advance(self, seconds: float, max_callbacks: int = 10_000_000) -> None:
        """Move time forward, running every timer due on the way, in order."""
        end = self.now + seconds
        heap = self._heap
        while heap and heap[0][0] <= end:
            when, _, handle, callback, args = heapq.heappop(heap)
            if handle.cancelled:
                continue
            self.now = max(self.now, when)
            handle.done = True
            self._live -= 1
            self.ran += 1
            if self.ran > max_callbacks:
                raise RuntimeError("timer storm: too many callbacks")
            callback(*args)
        self.now = end

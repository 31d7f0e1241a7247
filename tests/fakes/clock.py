"""Fake clocks for long-run tests: `Clock` (a callable, for code that takes `clock=`) and
`FakeLoop` (an event loop clock: timers run when the test advances time).

FakeLoop has only the parts of asyncio.AbstractEventLoop the forwarding code uses: time(),
call_at(), call_later(), call_soon(). `live()` counts timers scheduled and neither run nor
cancelled, so a test can assert that they stay bounded.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any


class Clock:
    """A callable clock for code that takes `clock=`: time moves only when a test moves it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


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


# --- a forwarder on the fake clock (the long-run tests and scripts/torture use it) ------------


class FakeServer:
    """A UDP 'socket' to a fake upstream on the fake clock: answers after `delay`, or never
    while `alive` is False. Stands in for a Channel in an upstream's pool."""

    def __init__(self, fw: Any, loop: FakeLoop, delay: float) -> None:
        self.fw = fw
        self.loop = loop
        self.delay = delay
        self.alive = True
        self.pending: dict[int, object] = {}
        self.budget = 10**12
        self.retired = False
        self.transport = self
        self.sent = 0

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def send(self, packet: bytes) -> None:
        self.sent += 1
        if self.alive:
            reply = packet[:2] + bytes([packet[2] | 0x80, 0x80]) + packet[4:]
            self.loop.call_later(self.delay, self._deliver, reply)

    def _deliver(self, reply: bytes) -> None:
        waiter = self.pending.pop((reply[0] << 8) | reply[1], None)
        if waiter is not None:
            self.fw.on_reply(waiter, reply)

    def forget(self, qid: int, waiter: object) -> bool:
        if self.pending.get(qid) is not waiter:
            return False
        del self.pending[qid]
        return True


def served(n: int, settings: Any, delay: float = 0.002) -> tuple[Any, FakeLoop, list[FakeServer]]:
    """A Forwarder to `n` fake upstreams, all on one fake clock."""
    from pldns.dns.forwarder import Forwarder
    from pldns.dns.settings import HostPort
    from pldns.dns.stats import Stats

    addresses = [HostPort(f"192.0.2.{i + 1}", 53) for i in range(n)]
    fw = Forwarder(addresses, settings, Stats())
    loop = FakeLoop()
    fw._loop = loop
    servers = []
    for up in fw.upstreams:
        server = FakeServer(fw, loop, delay)
        up.channels.append(server)
        servers.append(server)
    return fw, loop, servers


class RunResult:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.answered = 0
        self.total = 0
        self.timers_peak = 0


def run_for(
    fw: Any, loop: FakeLoop, seconds: float, qps: int, change: Callable[[int], None] | None = None
) -> RunResult:
    """`qps` queries a second for `seconds` of fake time, then the deadline and a second more
    for the last ones. Every query must get exactly one outcome."""
    import dns.message

    from pldns.dns.wire import scan_query

    wire = dns.message.make_query("www.example.test", "A").to_wire()
    q = scan_query(wire)
    res = RunResult()
    res.total = int(seconds * qps)
    step = 1.0 / qps
    for i in range(res.total):
        start = loop.time()

        def done(reply: bytes | None, start: float = start) -> None:
            res.latencies.append(loop.time() - start)
            res.answered += reply is not None

        fw.forward(wire, q, 1232, done)
        if change is not None:
            change(i)
        loop.advance(step)
        res.timers_peak = max(res.timers_peak, fw.timers())
    loop.advance(fw.settings.deadline + 1)
    assert len(res.latencies) == res.total, "every query got exactly one outcome"
    return res


def simulate(
    loop: FakeLoop, n: int, dead: list[int], seconds: float, qps: int, settings: Any = None
) -> RunResult:
    """A fresh forwarder to `n` upstreams of which `dead` never answer, for `seconds`."""
    from pldns.dns.settings import Forward

    fw, loop, servers = served(n, settings or Forward(udp_sockets=1))
    for i in dead:
        servers[i].alive = False
    try:
        return run_for(fw, loop, seconds, qps)
    finally:
        fw.close()

"""Forwarding: a client's query goes to the upstreams in turn until one answers or time is up.

Callback-driven, with no task per query: a query is a small state object waiting in its
channel's table; the reply (or an ICMP error) arrives through the channel, timeouts through
one timer that sweeps a heap of deadlines. Only the rare TCP fallback runs as a coroutine.
Timeouts, socket errors, SERVFAIL and REFUSED move on to the next upstream, round the list
again while `forward.deadline` allows; the outcome is handed to `done` exactly once.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Callable, Sequence

from pldns.dns.rcode import REFUSED, SERVFAIL
from pldns.dns.settings import Forward, HostPort
from pldns.dns.stats import Stats
from pldns.dns.upstream import Channel, QueryIds, Upstream
from pldns.dns.wire import OUR_PAYLOAD, UDP_MIN, Query, build_upstream_query

log = logging.getLogger("pldns.forward")

Done = Callable[[bytes | None], None]
SWEEP_EVERY = 0.01  # timeout resolution, seconds
RETRY_OPENING = 0.005  # wait for a socket pool being reopened


class Pending:
    """One client query being forwarded."""

    __slots__ = (
        "attempts", "channel", "client_limit", "deadline", "done", "finished", "last",
        "packet", "qid", "question", "said_no", "sent_at", "sent_limit", "seq", "turn",
        "up", "ups",
    )  # fmt: skip

    def __init__(
        self, packet: bytes, question: bytes, sent_limit: int, client_limit: int, done: Done
    ) -> None:
        self.packet = packet  # the upstream query; its ID is replaced per attempt
        self.question = question  # name lower-cased, type and class as sent: for matching
        self.sent_limit = sent_limit
        self.client_limit = client_limit
        self.done = done
        self.deadline = 0.0
        self.ups: list[Upstream] = []
        self.turn = 0
        self.attempts = 0
        self.said_no: list[Upstream] = []  # answered SERVFAIL/REFUSED: not asked again
        self.last: bytes | None = None
        self.seq = 0  # the current attempt's unique token: a stale timeout cannot match it
        self.up: Upstream | None = None
        self.channel: Channel | None = None
        self.qid = 0
        self.sent_at = 0.0
        self.finished = False


class Forwarder:
    """Owns the upstreams; `forward()` starts a query, `done(reply or None)` ends it."""

    def __init__(self, addresses: Sequence[HostPort], settings: Forward, stats: Stats) -> None:
        self.settings = settings
        self.try_timeout = settings.try_timeout
        self.upstreams = [Upstream(a, settings, stats.upstream(str(a)), self) for a in addresses]
        self.ids = QueryIds()
        self.all_up = True  # no upstream backed off: the configured order stands
        self.tasks: set[asyncio.Task[None]] = set()
        # (expires, attempt token, channel, qid): no reference to the query itself, so an
        # answered query is freed at once even though its entry waits here until it expires.
        self._heap: list[tuple[float, int, Channel, int]] = []
        self._count = itertools.count()
        self._tick: asyncio.TimerHandle | None = None
        self._sweeping = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def open(self) -> None:
        """Open the socket pools before the first query (else the first queries wait)."""
        self._loop = asyncio.get_running_loop()
        for up in self.upstreams:
            await up.refill()

    def order(self, now: float) -> list[Upstream]:
        """Configured order; upstreams that keep failing go last until their backoff ends."""
        ups = self.upstreams
        if self.all_up:
            return ups
        return [u for u in ups if u.available(now)] + [u for u in ups if not u.available(now)]

    def on_health(self) -> None:
        self.all_up = all(u.available(time.monotonic()) for u in self.upstreams)

    # -- a query's life ----------------------------------------------------------------------

    def forward(self, data: bytes, q: Query, client_limit: int, done: Done) -> None:
        """Start forwarding. Raises FormatError (malformed EDNS options) before sending."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        p = Pending(
            build_upstream_query(data, q, 0),
            q.qname + data[q.qend - 4 : q.qend],
            OUR_PAYLOAD if q.opt is not None else UDP_MIN,
            client_limit,
            done,
        )
        p.deadline = loop.time() + self.settings.deadline
        p.ups = self.upstreams if self.all_up else self.order(time.monotonic())
        p.attempts = max(3, 2 * len(p.ups))
        self._attempt(p)

    def _attempt(self, p: Pending) -> None:
        if p.finished:
            return
        loop = self._loop
        assert loop is not None
        now = loop.time()
        ups = p.ups
        while True:
            if p.turn >= p.attempts or now >= p.deadline - 0.001 or len(p.said_no) == len(ups):
                self._finish(p, p.last)
                return
            up = ups[p.turn % len(ups)]
            p.turn += 1
            if up in p.said_no:
                continue
            ch = up.channel()
            if ch is not None and ch.transport is not None:
                break
            if up.unreachable:  # no socket can be opened to it (no route): the next one
                up.failed("error", time.monotonic())
                continue
            p.turn -= 1  # the pool is reopening: the same upstream, a moment later
            loop.call_later(RETRY_OPENING, self._attempt, p)
            return
        qid = self.ids.next()
        while qid in ch.pending:  # never two queries with one ID on one socket
            qid = self.ids.next()
        p.seq = token = next(self._count)
        p.up, p.channel, p.qid, p.sent_at = up, ch, qid, now
        ch.pending[qid] = p
        up.stats.requests += 1
        ch.transport.sendto(qid.to_bytes(2, "big") + p.packet[2:])
        expires = now + self.try_timeout
        if expires > p.deadline:
            expires = p.deadline
        heapq.heappush(self._heap, (expires, token, ch, qid))
        if self._tick is None and not self._sweeping:
            self._tick = loop.call_at(max(expires, now + SWEEP_EVERY), self._sweep)

    def on_reply(self, p: Pending, reply: bytes) -> None:
        if reply[2] & 0x02 and p.client_limit > p.sent_limit:
            # Truncated, and the whole answer may fit the client: fetch it over TCP (RFC 7766
            # §5). If the client's own limit is no larger, it would be truncated anyway.
            task = asyncio.get_running_loop().create_task(self._over_tcp(p))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            return
        rcode = reply[3] & 0x0F
        if rcode in (SERVFAIL, REFUSED) or p.finished:
            self._judge(p, reply)
            return
        # The common case, inline: a good answer.
        up = p.up
        assert up is not None and self._loop is not None
        up.succeeded(self._loop.time() - p.sent_at)
        p.finished = True
        try:
            p.done(reply)
        except Exception:  # a reply that cannot be sent must not break the channel
            log.exception("delivering a forwarded reply failed")

    def on_error(self, p: Pending, reason: str) -> None:
        if p.up is not None:
            p.up.failed(reason, time.monotonic())
        self._attempt(p)

    def _judge(self, p: Pending, reply: bytes) -> None:
        up = p.up
        assert up is not None and self._loop is not None
        rcode = reply[3] & 0x0F
        if rcode in (SERVFAIL, REFUSED):
            up.failed("servfail" if rcode == SERVFAIL else "refused", time.monotonic(), False)
            p.said_no.append(up)
            p.last = reply
            self._attempt(p)
            return
        up.succeeded(self._loop.time() - p.sent_at)
        self._finish(p, reply)

    async def _over_tcp(self, p: Pending) -> None:
        up = p.up
        assert up is not None and self._loop is not None
        qid = self.ids.next()
        up.stats.requests += 1
        remaining = p.deadline - self._loop.time()
        try:
            reply = await up.query_tcp(
                qid.to_bytes(2, "big") + p.packet[2:], qid, p.question, remaining
            )
        except TimeoutError:
            self.on_error(p, "timeout")
            return
        except (OSError, EOFError, asyncio.IncompleteReadError):
            self.on_error(p, "error")
            return
        self._judge(p, reply)

    def _finish(self, p: Pending, reply: bytes | None) -> None:
        if p.finished:
            return
        p.finished = True
        try:
            p.done(reply)
        except Exception:  # a reply that cannot be sent must not break the channel
            log.exception("delivering a forwarded reply failed")

    def _sweep(self) -> None:
        """Fail the attempts whose time is up; stale entries (answered ones) are skipped."""
        self._tick = None
        loop = self._loop
        assert loop is not None
        now = loop.time()
        heap = self._heap
        self._sweeping = True  # a retry below must not arm a second timer: one is armed below
        try:
            while heap and heap[0][0] <= now:
                _, token, ch, qid = heapq.heappop(heap)
                p = ch.pending.get(qid)
                if isinstance(p, Pending) and p.seq == token and ch.forget(qid, p):
                    try:
                        self.on_error(p, "timeout")
                    except Exception:  # never leak a query: it gets its SERVFAIL
                        log.exception("retrying a timed-out query failed")
                        self._finish(p, None)
        finally:
            self._sweeping = False
            if heap and self._tick is None:
                self._tick = loop.call_at(max(heap[0][0], now + SWEEP_EVERY), self._sweep)

    def close(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        for task in self.tasks:
            task.cancel()
        for up in self.upstreams:
            up.close()

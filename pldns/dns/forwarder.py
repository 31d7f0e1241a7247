"""Forwarding: the I/O around the attempt policy (pldns.dns.attempt).

Callback-driven, with no task per query: a query is a small state object waiting in its
channel's table (a UDP socket or a pooled TCP connection); the reply, an ICMP error or a lost
connection arrives through the channel, and timeouts through ONE timer that sweeps the
attempts waiting in deadline order. What to do next is the policy's decision (`Plan.next`/`Plan.outcome`);
this module only sends, receives, and keeps that timer. The outcome is handed to `done`
exactly once: the reply, or None (the caller answers SERVFAIL).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Final

from pldns.dns.attempt import Change, Outcome, Plan, Policy, Step
from pldns.dns.health import Prober
from pldns.dns.rcode import REFUSED, SERVFAIL
from pldns.dns.settings import Forward, HostPort
from pldns.dns.stats import Stats
from pldns.dns.upstream import QueryIds, Upstream
from pldns.dns.wire import HEADER_LEN, OUR_PAYLOAD, UDP_MIN, Query, build_upstream_query

log = logging.getLogger("pldns.forward")

Done = Callable[[bytes | None], None]
SWEEP_EVERY: Final = 0.01  # timeout resolution, seconds
REASONS: Final = {
    Outcome.SERVFAIL: "servfail",
    Outcome.REFUSED: "refused",
    Outcome.TIMEOUT: "timeout",
}


class Pending:
    """One client query being forwarded."""

    __slots__ = (
        "channel", "client_limit", "done", "expires", "finished", "packet", "plan", "qid",
        "question", "sent_at", "sent_limit", "seq",
    )  # fmt: skip

    def __init__(
        self,
        packet: bytes,
        question: bytes,
        sent_limit: int,
        client_limit: int,
        done: Done,
        plan: Plan,
    ) -> None:
        self.packet = packet  # the upstream query; its ID is replaced per attempt
        self.question = question  # name lower-cased, type and class as sent: for matching
        self.sent_limit = sent_limit
        self.client_limit = client_limit
        self.done = done
        self.plan = plan
        self.seq = 0  # the current attempt's unique token: a stale timeout cannot match it
        self.channel: Any = None
        self.qid = 0
        self.sent_at = 0.0
        self.expires = 0.0  # when the current attempt times out
        self.finished = False


class Forwarder:
    """Owns the upstreams; `forward()` starts a query, `done(reply or None)` ends it."""

    def __init__(
        self,
        addresses: Sequence[HostPort],
        settings: Forward,
        stats: Stats,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.stats = stats
        self.upstreams = [
            Upstream(a, settings, stats.upstream(str(a)), self, i) for i, a in enumerate(addresses)
        ]
        for up in self.upstreams:  # a new forwarder starts with every upstream in rotation
            up.stats.healthy = up.stats.tcp_healthy = True
        self.policy = Policy(
            len(self.upstreams),
            settings.max_fails,
            settings.rise,
            settings.deadline,
            settings.try_timeout,
            rng,
        )
        self.prober = Prober(self, settings.health_interval)
        self.ids = QueryIds()
        # The attempts waiting, by token, in the order they time out: almost every attempt
        # times out try_timeout after it is sent, so sending order is deadline order and an
        # OrderedDict is the whole timer queue (O(1) in, O(1) out when the reply comes, the
        # oldest first for the sweep). An attempt cut short by its query's deadline (earlier
        # than the last one queued) goes to a small heap instead. Nothing stays behind once
        # an attempt ends: no per-query tuple lives on for try_timeout (those made the
        # garbage collector walk ~20k stale entries at 20k QPS), no heap to sift.
        self._due: OrderedDict[int, Pending] = OrderedDict()
        self._due_last = 0.0  # expiry of the newest entry of _due
        self._early: list[tuple[float, int]] = []  # (expires, token) heap; atoms only
        self._early_p: dict[int, Pending] = {}
        self._count = itertools.count()
        self._tick: Any = None
        self._sweeping = False
        self._loop: Any = None

    async def open(self) -> None:
        """Open the socket pools before the first query (else the first queries wait)."""
        self._loop = asyncio.get_running_loop()
        for up in self.upstreams:
            await up.refill()

    # -- a query's life ----------------------------------------------------------------------

    def forward(self, data: bytes, q: Query, client_limit: int, done: Done) -> None:
        """Start forwarding. Raises FormatError (malformed EDNS options) before sending."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        now = loop.time()
        p = Pending(
            build_upstream_query(data, q, 0),
            q.qname + data[q.qend - 4 : q.qend],
            OUR_PAYLOAD if q.opt is not None else UDP_MIN,
            client_limit,
            done,
            self.policy.plan(now),
        )
        self._step(p, p.plan.next(now), now)

    def _step(self, p: Pending, step: Step, now: float) -> None:
        """Carry out the policy's decisions until one is waiting on the network."""
        plan = p.plan
        while True:
            if step == Step.DELIVER:
                if plan.reply is not None and plan.reply is plan.truncated:
                    self.stats.truncated["tcp_failed"] += 1  # TC=1 to the client, not SERVFAIL
                self._finish(p, plan.reply)
                return
            up = self.upstreams[plan.upstream]
            ch = up.tcp.channel() if plan.tcp else up.channel()
            if ch is not None:
                break
            # No UDP socket can be opened to it (no route): an error, and the next one.
            up.stats.failures["error"] += 1
            self._health(up, False, Outcome.ERROR, now, up.last_error or "no socket")
            step = plan.outcome(Outcome.ERROR, None, now)
        pending = ch.pending
        qid = self.ids.next()
        while qid in pending:  # never two queries with one ID on one socket or connection
            qid = self.ids.next()
        p.seq = token = next(self._count)
        p.channel, p.qid, p.sent_at = ch, qid, now
        pending[qid] = p
        up.stats.requests += 1
        p.expires = expires = plan.expires
        if expires >= self._due_last or not self._due:
            self._due[token] = p
            self._due_last = expires
        else:
            heapq.heappush(self._early, (expires, token))
            self._early_p[token] = p
        if self._tick is None and not self._sweeping:
            self._tick = self._loop.call_at(max(expires, now + SWEEP_EVERY), self._sweep)
        ch.send(qid.to_bytes(2, "big") + p.packet[2:])  # may fail the query at once (on_error)

    def _unschedule(self, p: Pending) -> None:
        """The attempt ended (a reply, an error): its timeout goes."""
        if self._due.pop(p.seq, None) is None:
            self._early_p.pop(p.seq, None)  # its heap entry is skipped when it comes up

    def on_reply(self, p: Any, reply: bytes) -> None:
        """A matching reply arrived on a channel (UDP or TCP)."""
        if type(p) is not Pending:
            p.on_reply(reply)  # a health probe
            return
        self._unschedule(p)
        if p.finished:
            return
        plan = p.plan
        rcode = reply[3] & 0x0F
        if reply[2] & 0x02 and not plan.tcp and p.client_limit > p.sent_limit:
            # Truncated, and the whole answer may fit the client: fetch it over TCP (RFC 7766
            # §5). If the client's own limit is no larger, it would be truncated anyway.
            outcome = Outcome.TRUNCATED
        elif rcode == SERVFAIL:
            outcome = Outcome.SERVFAIL
        elif rcode == REFUSED:
            outcome = Outcome.REFUSED
        else:
            outcome = Outcome.ANSWER
            if reply[5] == 0 and reply[4] == 0:  # FORMERR/NOTIMP without our question
                reply = (
                    reply[:4]
                    + b"\x00\x01\x00\x00\x00\x00\x00\x00"
                    + p.packet[HEADER_LEN : HEADER_LEN + len(p.question)]
                )
        up = self.upstreams[plan.upstream]
        now = self._loop.time()
        up.stats.duration.observe(now - p.sent_at)
        if outcome in REASONS:
            up.stats.failures[REASONS[outcome]] += 1
        self._health(up, plan.tcp, outcome, now, "")
        self._step(p, plan.outcome(outcome, reply, now), now)

    def on_error(self, p: Any, reason: str) -> None:
        """A channel failed under a query: ICMP unreachable, a lost or refused connection."""
        if type(p) is not Pending:
            p.on_error(reason)
            return
        self._unschedule(p)
        if p.finished:
            return
        self._failed(p, Outcome.ERROR, reason)

    def _failed(self, p: Pending, outcome: Outcome, reason: str) -> None:
        plan = p.plan
        up = self.upstreams[plan.upstream]
        up.stats.failures["timeout" if outcome == Outcome.TIMEOUT else "error"] += 1
        now = self._loop.time()
        cause = f"{'tcp' if plan.tcp else 'udp'} {reason}"
        self._health(up, plan.tcp, outcome, now, cause)
        self._step(p, plan.outcome(outcome, None, now), now)

    def _finish(self, p: Pending, reply: bytes | None) -> None:
        if p.finished:
            return
        p.finished = True
        try:
            p.done(reply)
        except Exception:  # a reply that cannot be sent must not break the channel
            log.exception("delivering a forwarded reply failed")

    # -- health ----------------------------------------------------------------------------

    def _health(self, up: Upstream, tcp: bool, outcome: Outcome, now: float, cause: str) -> None:
        change = self.policy.record(up.index, tcp, outcome, now, cause)
        if change is not None:
            self.health_changed(up, tcp, change)

    def health_changed(self, up: Upstream, tcp: bool, change: Change) -> None:
        """Log once per state change, with the cause; update the gauge; start/stop probing."""
        health = (self.policy.tcp if tcp else self.policy.udp)[up.index]
        transport = "tcp" if tcp else "udp"
        if tcp:
            up.stats.tcp_healthy = health.up
        else:
            up.stats.healthy = health.up
        if change == Change.DOWN:
            up.last_error = health.cause
            log.warning(
                "upstream %s (%s) is down after %d failures in a row (last: %s); probing it "
                "every %gs",
                up.name, transport, health.fails, health.cause, self.settings.health_interval,
            )  # fmt: skip
            self.prober.start(up, tcp)
        else:
            log.warning(
                "upstream %s (%s) is back after %d good probe(s), down for %.1fs",
                up.name, transport, health.good_probes, health.down_for,
            )  # fmt: skip
            self.prober.stop(up, tcp)

    # -- the one timer -----------------------------------------------------------------------

    def _sweep(self) -> None:
        """Fail the attempts whose time is up (oldest first), then re-arm for the next one."""
        self._tick = None
        loop = self._loop
        now = loop.time()
        due, early, early_p = self._due, self._early, self._early_p
        self._sweeping = True  # a retry below must not arm a second timer: one is armed below
        try:
            while True:
                if due and next(iter(due.values())).expires <= now:
                    _, p = due.popitem(last=False)
                elif early and early[0][0] <= now:
                    gone = early_p.pop(heapq.heappop(early)[1], None)
                    if gone is None:
                        continue  # that attempt ended already
                    p = gone
                else:
                    break
                if p.channel.forget(p.qid, p):
                    try:
                        self._failed(p, Outcome.TIMEOUT, "timeout")
                    except Exception:  # never leak a query: it gets its SERVFAIL
                        log.exception("retrying a timed-out query failed")
                        self._finish(p, None)
        finally:
            self._sweeping = False
            if self._tick is None and (due or early):
                first = min(
                    next(iter(due.values())).expires if due else float("inf"),
                    early[0][0] if early else float("inf"),
                )
                self._tick = loop.call_at(max(first, now + SWEEP_EVERY), self._sweep)

    def waiting(self) -> int:
        """Attempts waiting for a reply or a timeout (bounded by the queries in flight)."""
        return len(self._due) + len(self._early_p)

    def timers(self) -> int:
        """Timers this forwarder has armed right now (the sweep, probes): for tests."""
        return (self._tick is not None) + self.prober.timers()

    def close(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        self.prober.close()
        for up in self.upstreams:
            up.close()

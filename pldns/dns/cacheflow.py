"""The cache on the forward path: look up, coalesce, forward, store, serve stale, prefetch.

`CacheFlow.handle` takes a scanned query the resolver would forward:

- a fresh entry answers it at once (its ID, its spelling, TTLs counted down); an entry hit
  `prefetch` times and in the last 10 % of its life is refreshed in the background, once;
- otherwise the query joins the flight already asking upstream for the same key
  (coalescing: N identical queries in flight become one upstream query), or starts one;
- when the flight's outcome is a failure (no answer before `forward.deadline`, or SERVFAIL /
  REFUSED from every upstream) and an entry expired less than `stale_window` ago exists, the
  waiting clients get it with TTL `stale_ttl` (RFC 8767 §4), and for `stale_ttl` seconds
  that name is answered stale without asking again (the "failure recheck timer", §4);
- if a stale entry exists and `client_timeout` passes before the upstream answers, the
  waiting clients get the stale answer then (the client-response timer, RFC 8767 §5) while
  the flight goes on and refreshes the entry when it lands.

Bounded: every waiting client counts in `stats.inflight` (capped by `forward.max_inflight`),
at most MAX_WAITERS clients wait on one flight, and there are at most `forward.max_inflight`
flights, background ones included.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from pldns.dns.answer import SOURCE_CACHE, SOURCE_LOCAL, SOURCE_UPSTREAM
from pldns.dns.cache import KIND_SERVFAIL, KINDS, Entry, PacketCache, cache_key
from pldns.dns.cname import CNAME_IN
from pldns.dns.rcode import REFUSED, SERVFAIL, DnsError
from pldns.dns.stats import LABEL_INDEX, QTYPE_LABELS
from pldns.dns.wire import HEADER_LEN, TCP_MAX, UDP_MIN, Query, build_error, truncate, udp_limit

if TYPE_CHECKING:
    from pldns.dns.pipeline import Exchange, Frontend, SendTo

log = logging.getLogger("pldns.cache")

MAX_WAITERS: Final = 1000  # clients waiting on one flight; more are forwarded on their own
RAW_MAX: Final = 10_000  # popular query byte strings remembered for the fast path

Waiter = tuple["Exchange", Query, int]  # the exchange, its query, its reply size limit
Raw = tuple[bytes, Query, str, int, int, int]


class Flight:
    """One upstream query for a key, and the clients waiting for it."""

    __slots__ = ("key", "q", "timed_out", "timer", "waiters")

    def __init__(self, key: bytes, q: Query) -> None:
        self.key = key
        self.q = q
        self.waiters: list[Waiter] = []
        self.timer: asyncio.TimerHandle | None = None
        self.timed_out = False


class CacheFlow:
    """The cache hook of a Frontend; `clock` is the cache's notion of now (monotonic)."""

    def __init__(
        self, frontend: Frontend, cache: PacketCache, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.fe = frontend
        self.cache = cache
        self.clock = clock
        self.flights: dict[bytes, Flight] = {}
        # query bytes after the ID -> (key, query, qtype label, qend, UDP size limit, label
        # index): the shape _mmsg.serve reads too (pldns/dns/hitpath.py)
        self.raw: dict[bytes, Raw] = {}
        # what `raw` was filled under: the owned names, and the forward settings (its limits)
        self.table_seen = frontend.resolver.table
        self.forward_seen = frontend.forwarder.settings

    def raw_current(self) -> bool:
        """Was `raw` filled under the owned names and forward settings in force? If not, it
        is emptied (a name owned now must not come from the cache, nor a hit over a UDP size
        limit a reload lowered) and fills again on the next hits."""
        fe = self.fe
        if fe.resolver.table is self.table_seen and fe.forwarder.settings is self.forward_seen:
            return True
        self.raw.clear()
        return False

    def fast(self, ex: Exchange) -> bool:
        """Answer a query whose bytes (after the ID) were seen hit before, without scanning it.

        `raw` maps those bytes to the key and the scanned query; it is filled on hits only
        (popular queries), emptied when full or when the owned-name table changes (an owned
        name must never come from the cache).
        """
        data = ex.data
        hit = self.raw.get(data[2:])
        if hit is None:
            return False
        fe = self.fe
        if not self.raw_current():
            return False
        key, q, label = hit[0], hit[1], hit[2]
        now = self.clock()
        reply, entry = self.cache.lookup(key, data, q.qend, now)
        if reply is None:
            return False  # expired: the full path decides (stale, coalescing, forwarding)
        fe.stats.requests[(ex.proto, label)] += 1
        self._send(ex, q, reply)
        if entry is not None:
            self._prefetch(key, data, q, entry, now)
        return True

    def answer_udp(
        self, data: bytes, question: bytes, host: str, addr: Any, sendto: SendTo, start: float
    ) -> bool:
        """`fast` for UDP in one call (as Frontend.answer_udp_fast, which has sliced
        `question` = data[2:] already): True if answered."""
        hit = self.raw.get(question)
        if hit is None:
            return False
        fe = self.fe
        if not fe.accepting or fe.querylog is not None or not fe.acl.allowed(host):
            return False
        if not self.raw_current():
            return False
        key, q, label, limit = hit[0], hit[1], hit[2], hit[4]
        now = self.clock()
        reply, entry = self.cache.lookup(key, data, q.qend, now)
        if reply is None:
            return False
        if len(reply) > UDP_MIN and len(reply) > limit:
            reply = truncate(reply, q.qend, q.opt)
        sendto(reply, addr)
        stats = fe.stats
        stats.requests[("udp", label)] += 1
        stats.respond(reply, SOURCE_CACHE, time.perf_counter() - start)
        if entry is not None:
            self._prefetch(key, data, q, entry, now)
        return True

    def handle(self, ex: Exchange, q: Query) -> bool:
        """True if the cache took the query (answered it, or it waits on a flight)."""
        fe = self.fe
        if q.qname in fe.resolver.table.names:
            return False  # an owned name forwarded (when_unknown: forward) is never stored
        data = ex.data
        key = cache_key(data, q)
        if key is None:
            return False
        cache = self.cache
        now = self.clock()
        reply, entry = cache.lookup(key, data, q.qend, now)
        if reply is not None:
            self._send(ex, q, reply)
            if entry is not None:
                self._prefetch(key, data, q, entry, now)
            raw = self.raw
            if not self.raw_current():
                self.table_seen = fe.resolver.table
                self.forward_seen = fe.forwarder.settings
            if len(raw) >= RAW_MAX:
                raw.clear()
            label = QTYPE_LABELS.get(q.qtype, "other")
            raw[data[2:]] = (key, q, label, q.qend, self._udp_limit(q), LABEL_INDEX[label])
            return True
        cache.misses += 1
        # `entry` is now None or stale (expired less than stale_window ago).
        flight = self.flights.get(key)
        if flight is not None:
            if entry is not None and flight.timed_out:
                self._send(ex, q, cache.answer_stale(entry, data, q.qend))
                return True
            if len(flight.waiters) >= MAX_WAITERS or fe.stats.inflight >= fe.max_inflight:
                return False  # the usual path: forwarded alone, or REFUSED at the limit
            flight.waiters.append((ex, q, self._limit(ex, q)))
            fe.stats.inflight += 1
            cache.coalesced += 1
            return True
        if entry is not None and now < cache.retry_after(key):
            self._send(ex, q, cache.answer_stale(entry, data, q.qend))
            return True
        if fe.stats.inflight >= fe.max_inflight or len(self.flights) >= fe.max_inflight:
            return False
        self._start(key, data, q, (ex, q, self._limit(ex, q)), entry is not None)
        return True

    def _prefetch(self, key: bytes, data: bytes, q: Query, entry: Entry, now: float) -> None:
        """Refresh a popular entry in the last 10 % of its life in the background, once."""
        cache = self.cache
        if key in self.flights:
            return
        if self._start(key, data, q, None, False):
            entry.hits = -1
            cache.prefetches[entry.kind] += 1

    def _limit(self, ex: Exchange, q: Query) -> int:
        return self._udp_limit(q) if ex.proto == "udp" else TCP_MAX

    def _udp_limit(self, q: Query) -> int:
        # At most forward.max_udp_size over UDP whatever the client advertises (#9).
        return min(udp_limit(q), self.fe.forwarder.settings.max_udp_size)

    def _send(self, ex: Exchange, q: Query, reply: bytes) -> None:
        if len(reply) > UDP_MIN and len(reply) > self._limit(ex, q):
            reply = truncate(reply, q.qend, q.opt)
        self.fe._reply(ex, reply, SOURCE_CACHE)

    # -- flights -------------------------------------------------------------------------------

    def _start(self, key: bytes, data: bytes, q: Query, waiter: Waiter | None, timer: bool) -> bool:
        """Ask upstream for `key`; without a waiter it is a background refresh."""
        fe = self.fe
        if waiter is None and len(self.flights) >= fe.max_inflight:
            return False
        flight = Flight(key, q)
        if waiter is not None:
            flight.waiters.append(waiter)
            fe.stats.inflight += 1
        self.flights[key] = flight
        # A background refresh takes the whole answer (over TCP if truncated): it is for the
        # cache, and a truncated reply cannot be stored.
        limit = TCP_MAX if waiter is None else waiter[2]
        try:
            fe.forwarder.forward(data, q, limit, lambda reply: self._landed(flight, reply))
        except DnsError as err:  # a malformed EDNS option found while rewriting
            self._end(flight)
            for ex, wq, _ in flight.waiters:
                fe.stats.inflight -= 1
                fe._reply(ex, build_error(ex.data, err.rcode, wq.qend, wq.opt), SOURCE_LOCAL)
            return False
        if timer and self.flights.get(key) is flight:
            loop = asyncio.get_running_loop()
            flight.timer = loop.call_later(self.cache.settings.client_timeout, self._late, flight)
        return True

    def _end(self, flight: Flight) -> None:
        if self.flights.get(flight.key) is flight:
            del self.flights[flight.key]
        if flight.timer is not None:
            flight.timer.cancel()
            flight.timer = None

    def _late(self, flight: Flight) -> None:
        """The client-response timer: answer the waiting clients from the stale entry."""
        flight.timer = None
        flight.timed_out = True
        self._serve_cached(flight)

    def _serve_cached(self, flight: Flight) -> bool:
        """Answer the waiting clients from the entry for the flight's key, fresh or stale;
        False when there is no such entry (or only a SERVFAIL)."""
        cache, fe, now = self.cache, self.fe, self.clock()
        entry = cache.entries.get(flight.key)
        if entry is None:
            return False
        expires, _, _, kind = entry.trailer()
        if KINDS[kind] == KIND_SERVFAIL or now >= expires + cache.settings.stale_window:
            return False
        waiters, flight.waiters = flight.waiters, []
        for ex, q, _ in waiters:
            fe.stats.inflight -= 1
            out = cache.lookup(flight.key, ex.data, q.qend, now)[0] if now < expires else None
            self._send(ex, q, out or cache.answer_stale(entry, ex.data, q.qend))
        return True

    def _landed(self, flight: Flight, reply: bytes | None) -> None:
        """The forwarder's outcome for a flight: store it, hand it to every waiting client."""
        self._end(flight)
        cache, fe, now = self.cache, self.fe, self.clock()
        key, fq = flight.key, flight.q
        if reply is None or reply[3] & 0x0F in (SERVFAIL, REFUSED):
            entry = cache.entries.get(key)
            if entry is not None and self._serve_cached(flight):
                if now >= entry.expires:  # RFC 8767 §4: the failure recheck timer
                    cache.failed_refresh(key, now + cache.settings.stale_ttl)
                return
        if reply is not None:
            if reply.find(CNAME_IN, fq.qend) >= 0:  # a CNAME chain into an owned name? (cname.py)
                reply = fe.chains.rewrite(fq, reply)
            if fe.leaks is not None and fe.leaks.watches(fq.qname):
                fe.leaks.inspect(fq.qname, reply, fq.qend)
            if fq.qname not in fe.resolver.table.names:
                cache.insert(key, reply, fq.qtype, now)
        for ex, q, limit in flight.waiters:
            fe.stats.inflight -= 1
            data = ex.data
            if reply is None:
                fe._reply(ex, build_error(data, SERVFAIL, q.qend, q.opt), SOURCE_LOCAL)
                continue
            qend = q.qend
            out = data[:2] + reply[2:HEADER_LEN] + data[HEADER_LEN:qend] + reply[qend:]
            if len(out) > limit:
                out = truncate(out, qend, q.opt)
            fe._reply(ex, out, SOURCE_UPSTREAM)
        flight.waiters = []

    def close(self) -> None:
        """Cancel the client-response timers (shutdown)."""
        for flight in self.flights.values():
            if flight.timer is not None:
                flight.timer.cancel()
                flight.timer = None

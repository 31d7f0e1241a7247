"""The query pipeline: ACL -> fast path -> answer -> cache -> limit -> forward -> leak -> log.

`Frontend.handle` is the one entry for a query from either transport: access control, the
sans-IO resolver, the in-flight bound, forwarding, and the reply. No exception from one
query reaches a listener.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from pldns.dns.acl import Acl
from pldns.dns.answer import SOURCE_LOCAL, SOURCE_OWNED, SOURCE_UPSTREAM, Local, Resolver
from pldns.dns.cname import CNAME_IN, ChainRewriter
from pldns.dns.forwarder import Done
from pldns.dns.leak import LeakDetector
from pldns.dns.querylog import QueryLog
from pldns.dns.rcode import REFUSED, SERVFAIL, DnsError, Drop, rcode_name
from pldns.dns.settings import Forward, Tcp
from pldns.dns.stats import Stats, qtype_label
from pldns.dns.wire import TCP_MAX, Query, build_error, decode_name, scan_query, truncate, udp_limit

if TYPE_CHECKING:
    from pldns.dns.cacheflow import CacheFlow

log = logging.getLogger("pldns.server")

Send = Callable[[bytes], None]
# (reply, address): the address is the listener's own (a (host, port[, flow, scope]) tuple
# for the event loop's transport, a raw sockaddr for the batched listener), handed back as is.
SendTo = Callable[[bytes, Any], None]


class Forwarding(Protocol):
    """What the pipeline uses of the forwarder (pldns.dns.forwarder.Forwarder; a fake in tests).

    A Protocol, not the class: with the data plane compiled (pldns.dns.COMPILED) a value typed
    as a class must be that class.
    """

    settings: Forward

    def forward(self, data: bytes, q: Query, client_limit: int, done: Done) -> None: ...


class Exchange:
    """One query in progress: its bytes, who asked and how, when, and how to answer."""

    __slots__ = ("data", "host", "proto", "send", "start")

    def __init__(self, data: bytes, host: str, proto: str, send: Send, start: float) -> None:
        self.data = data
        self.host = host
        self.proto = proto
        self.send = send
        self.start = start


class Frontend:
    """Everything a listener needs to turn a query into a reply."""

    def __init__(
        self,
        resolver: Resolver,
        forwarder: Forwarding,
        acl: Acl,
        deny: str,
        stats: Stats,
        max_inflight: int,
        leaks: LeakDetector | None = None,
        querylog: QueryLog | None = None,
        tcp: Tcp | None = None,
    ) -> None:
        self.resolver = resolver
        self.forwarder = forwarder
        self.acl = acl
        self.deny = deny
        self.stats = stats
        self.max_inflight = max_inflight
        self.leaks = leaks
        self.querylog = querylog
        self.tcp = tcp or Tcp()  # read when a connection opens, so a reload applies to new ones
        self.chains = ChainRewriter(resolver, stats)
        self.accepting = True  # False once shutdown starts: new queries are ignored
        self.cache: CacheFlow | None = None  # the packet cache hook (cache.enabled)

    def handle(self, data: bytes, host: str, proto: str, send: Send) -> bool:
        """Reply through `send` now or later; False when the packet gets no reply at all."""
        ex = Exchange(data, host, proto, send, time.perf_counter())
        if not self.accepting:
            return False
        if not self.acl.allowed(host):
            return self._deny(ex)
        reply = self.resolver.fast(data, proto)
        if reply is not None:
            self._reply(ex, reply, SOURCE_OWNED)
            return True
        if self.cache is not None and self.cache.raw and self.cache.fast(ex):
            return True  # a repeated query answered from the cache without a scan
        try:
            result = self.resolver.resolve(data, proto)
        except Drop as drop:
            self.stats.dropped[drop.reason] += 1
            return False
        if type(result) is Local:
            self._reply(ex, result.reply, result.source)
            return True
        q: Query = result  # type: ignore[assignment]
        if self.cache is not None and self.cache.handle(ex, q):
            return True  # answered from the cache, or waiting on an identical query upstream
        if self.stats.inflight >= self.max_inflight:
            self.stats.rejected_inflight += 1
            self._reply(ex, build_error(data, REFUSED, q.qend, q.opt), SOURCE_LOCAL)
            return True
        # Whatever the client advertises, a UDP reply is at most forward.max_udp_size (1232 by
        # default, as Unbound and DNS flag day 2020 settled): larger ones go TC=1 (#9, no 834x
        # amplification, never a datagram too big to send).
        limit = (
            min(udp_limit(q), self.forwarder.settings.max_udp_size) if proto == "udp" else TCP_MAX
        )
        self.stats.inflight += 1  # _forwarded takes it back, whenever the outcome comes
        try:
            self.forwarder.forward(data, q, limit, lambda got: self._forwarded(ex, q, limit, got))
        except DnsError as err:  # a malformed EDNS option found while rewriting
            self.stats.inflight -= 1
            self._reply(ex, build_error(data, err.rcode, q.qend, q.opt), SOURCE_LOCAL)
        return True

    def answer_udp_fast(self, data: bytes, host: str, addr: Any, sendto: SendTo) -> bool:
        """The prebuilt-reply path for UDP in one call (True: answered and counted).

        The same reply and the same counts as `handle` gives a plain lower-case A/AAAA query
        for an owned name, without the per-query closure, Exchange and four calls (measured
        in bench/querycost.py). Anything else, or the query log on, takes `handle`.
        """
        start = time.perf_counter()
        question = data[2:]
        hit = self.resolver.table.fast.get(question)
        if hit is None and self.cache is not None and self.cache.raw:
            # a repeated cache hit
            return self.cache.answer_udp(data, question, host, addr, sendto, start)
        if (
            hit is None
            or not self.accepting
            or self.querylog is not None
            or not self.acl.allowed(host)
        ):
            return False
        replies, label = hit
        reply = data[:2] + replies[next(self.resolver._turn) % len(replies)]
        sendto(reply, addr)
        stats = self.stats
        stats.requests[("udp", label)] += 1
        stats.respond(reply, SOURCE_OWNED, time.perf_counter() - start)
        return True

    def _reply(self, ex: Exchange, reply: bytes, source: str) -> None:
        ex.send(reply)
        seconds = time.perf_counter() - ex.start
        self.stats.respond(reply, source, seconds)
        if self.querylog is not None and self.querylog.sampled():
            try:
                q = scan_query(ex.data)
                name, qtype = decode_name(q.qname), qtype_label(q.qtype)
            except (Drop, DnsError):
                name, qtype = "-", "invalid"
            rcode = rcode_name(reply[3] & 0x0F)
            self.querylog.write(ex.host, ex.proto, name, qtype, rcode, seconds * 1000, source)

    def _forwarded(self, ex: Exchange, q: Query, limit: int, reply: bytes | None) -> None:
        """The forwarder's outcome: relay the upstream's reply, or SERVFAIL when none came."""
        self.stats.inflight -= 1
        data = ex.data
        if reply is None:
            self._reply(ex, build_error(data, SERVFAIL, q.qend, q.opt), SOURCE_LOCAL)
            return
        if reply.find(CNAME_IN, q.qend) >= 0:  # a CNAME chain into an owned name? (cname.py)
            reply = self.chains.rewrite(q, reply)
        if self.leaks is not None and self.leaks.watches(q.qname):
            self.leaks.inspect(q.qname, reply, q.qend)
        reply = data[:2] + reply[2:]
        if len(reply) > limit:
            reply = truncate(reply, q.qend, q.opt)
            self.stats.truncated["size"] += 1
        self._reply(ex, reply, SOURCE_UPSTREAM)

    def _deny(self, ex: Exchange) -> bool:
        """A client outside `allow`: REFUSED (counted as a local reply) or silence (dropped)."""
        if self.deny == "drop":
            self.stats.dropped["acl"] += 1
            return False
        try:
            q = scan_query(ex.data)
        except (Drop, DnsError):
            self.stats.dropped["acl"] += 1
            return False
        self._reply(ex, build_error(ex.data, REFUSED, q.qend, q.opt), SOURCE_LOCAL)
        return True

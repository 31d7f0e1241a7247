"""Decide what to do with one query: answer it from the table, forward it, or fail it.

Sans-IO: bytes in, bytes (a reply) or a Query (to forward) out. No await, no sockets.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Final

from pldns.dns.rcode import SERVFAIL, BadVersion, DnsError, Refused
from pldns.dns.settings import DEFAULT_MAX_UDP_SIZE
from pldns.dns.stats import QTYPE_LABELS, Stats
from pldns.dns.table import RecordTable
from pldns.dns.wire import (
    CLASS_ANY,
    CLASS_IN,
    TYPE_A,
    TYPE_AAAA,
    TYPE_ANY,
    TYPE_AXFR,
    TYPE_IXFR,
    TYPE_PTR,
    TYPE_SOA,
    Query,
    build_answer,
    build_error,
    scan_query,
    strip_hop_by_hop,
    truncate,
    udp_limit,
)

WHEN_UNKNOWN_FORWARD: Final = "forward"

# Where a reply came from, for metrics and the query log (bounded label values).
SOURCE_OWNED: Final = "owned"
SOURCE_UPSTREAM: Final = "upstream"
SOURCE_LOCAL: Final = "local"  # an error we produced ourselves: FORMERR, REFUSED, SERVFAIL, ...
SOURCE_CACHE: Final = "cache"  # from the packet cache (fresh or stale)


@dataclass(slots=True)
class Local:
    """A reply made here, and which source label it counts under."""

    reply: bytes
    source: str


class Resolver:
    """Holds the current table; `table` is replaced whole by the sync (never mutated)."""

    def __init__(
        self,
        table: RecordTable,
        when_unknown: str,
        stats: Stats,
        max_udp_size: int = DEFAULT_MAX_UDP_SIZE,
    ) -> None:
        self.table = table
        self.when_unknown = when_unknown
        self.stats = stats
        # The largest UDP answer whatever the client advertises (forward.max_udp_size): an
        # owned name with many addresses must not become an amplifier either.
        self.max_udp_size = max_udp_size
        self._turn = itertools.count()

    def turn(self) -> int:
        """The next rotation step (round robin over an owned name's address orders)."""
        return next(self._turn)

    def fast(self, data: bytes, proto: str) -> bytes | None:
        """The reply to a plain lower-case A/AAAA query for an owned name, or None.

        One dict lookup of the query's bytes after the ID (see table.fast_replies); what
        misses takes `resolve`, which gives the same answer.
        """
        hit = self.table.fast.get(data[2:])
        if hit is None:
            return None
        replies, label = hit
        self.stats.requests[(proto, label)] += 1
        return data[:2] + replies[next(self._turn) % len(replies)]

    def resolve(self, data: bytes, proto: str) -> Local | Query:
        """Answer locally (Local) or hand back the scanned Query for forwarding.

        Raises Drop for packets that get no reply at all.
        """
        try:
            q = scan_query(data)
        except DnsError as err:
            self.stats.requests[(proto, "invalid")] += 1
            return Local(build_error(data, err.rcode, err.qend), SOURCE_LOCAL)
        self.stats.requests[(proto, QTYPE_LABELS.get(q.qtype, "other"))] += 1
        try:
            return self._decide(data, q, proto)
        except DnsError as err:
            return Local(build_error(data, err.rcode, q.qend, q.opt), SOURCE_LOCAL)

    def _decide(self, data: bytes, q: Query, proto: str) -> Local | Query:
        if q.opt is not None and q.opt.version != 0:
            raise BadVersion("EDNS version")  # RFC 6891 §6.1.3
        if q.opt is not None and q.opt.options:
            strip_hop_by_hop(q.opt.options)  # a malformed option list: FORMERR, owned or not
        owned = self.table.names.get(q.qname)
        if owned is None:
            return q
        # Each owned name is a tiny zone of class IN. QCLASS ANY ("*", RFC 1035 §3.2.5) gets
        # the IN data, without AA: we hold no other class, but an answer to QCLASS ANY cannot
        # claim to be the whole truth for every class (RFC 6895 §3.2). Any other class (CH,
        # HS, NONE, ...) is REFUSED: the name is ours, so it is not forwarded for a public
        # answer, and we serve no data in that class (RFC 1035 §4.1.1: refused by policy).
        aa = True
        if q.qclass != CLASS_IN:
            if q.qclass != CLASS_ANY:
                raise Refused("class")
            aa = False
        if not owned.known:
            if self.when_unknown == WHEN_UNKNOWN_FORWARD:
                return q
            return Local(build_error(data, SERVFAIL, q.qend, q.opt), SOURCE_LOCAL)
        qtype = q.qtype
        if qtype == TYPE_ANY:
            # RFC 8482 §4.2: one RRset is a valid answer to ANY. The addresses are what a
            # client wants: A, else AAAA (an IPv6-only service), else the PTR.
            if owned.a_count:
                qtype = TYPE_A
            elif owned.aaaa_count:
                qtype = TYPE_AAAA
            elif owned.ptr:
                qtype = TYPE_PTR
        if qtype == TYPE_A and owned.a_count:
            rot = owned.a[next(self._turn) % len(owned.a)]
            reply = build_answer(data, q, owned.a_count, rot, aa=aa)
        elif qtype == TYPE_AAAA and owned.aaaa_count:
            rot = owned.aaaa[next(self._turn) % len(owned.aaaa)]
            reply = build_answer(data, q, owned.aaaa_count, rot, aa=aa)
        elif qtype == TYPE_SOA:
            # The same SOA the negative answers carry: the owned name is its zone's apex.
            reply = build_answer(data, q, 1, owned.soa, aa=aa)
        elif qtype == TYPE_PTR and owned.ptr:
            reply = build_answer(data, q, 1, owned.ptr, aa=aa)
        elif qtype in (TYPE_AXFR, TYPE_IXFR):
            raise Refused("zone transfer")  # RFC 5936 §2.2.1: transfers may be refused
        else:
            # NODATA: the name exists, this type does not (RFC 2308 §2.2); NS included (the
            # tiny zone has no delegation to publish). Never NXDOMAIN and never forwarded, or
            # a public AAAA/HTTPS answer would lead clients around the endpoint.
            reply = build_answer(data, q, 0, b"", 1, owned.soa, aa=aa)
        if proto == "udp" and len(reply) > min(udp_limit(q), self.max_udp_size):
            reply = truncate(reply, q.qend, q.opt)
        return Local(reply, SOURCE_OWNED)

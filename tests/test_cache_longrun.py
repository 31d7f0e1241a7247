"""The cache hook over a long run: a million queries through Frontend.handle with a fake
forwarder (answers, SERVFAILs, give-ups and late answers, in random order) on a fake clock.

Whatever happens, every client gets exactly one reply, the flight table and the in-flight
count stay bounded and return to zero, and the cache stays within its size.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import dns.message
import dns.rcode
import dns.rrset

from pldns.dns.acl import Acl
from pldns.dns.answer import Resolver
from pldns.dns.cache import PacketCache
from pldns.dns.cacheflow import CacheFlow
from pldns.dns.pipeline import Frontend
from pldns.dns.settings import Cache, Forward
from pldns.dns.stats import Stats
from pldns.dns.table import RecordTable
from pldns.dns.wire import Query

STEPS = 1_000_000
NAMES = 5_000
MAX_INFLIGHT = 64


class FakeForwarder:
    """Keeps each forward's `done`; the test decides when and how it ends."""

    def __init__(self) -> None:
        self.pending: list[tuple[bytes, Callable[[bytes | None], None]]] = []
        self.sent = 0
        self.settings = Forward()  # the frontend reads forward.max_udp_size from it

    def forward(
        self, data: bytes, q: Query, limit: int, done: Callable[[bytes | None], None]
    ) -> None:
        self.sent += 1
        self.pending.append((data, done))


def replies_for(name: str) -> dict[str, bytes]:
    q = dns.message.make_query(name, "A")
    good = dns.message.make_response(q)
    good.answer.append(dns.rrset.from_text(name + ".", 30, "IN", "A", "192.0.2.1"))
    bad = dns.message.make_response(q)
    bad.set_rcode(dns.rcode.SERVFAIL)
    return {"good": good.to_wire(), "servfail": bad.to_wire()}


def test_a_million_queries_with_failures_keep_everything_bounded() -> None:
    async def run() -> dict[str, Any]:
        stats = Stats()
        fwd = FakeForwarder()
        fe = Frontend(
            Resolver(RecordTable(), "forward", stats), fwd, Acl(["127.0.0.0/8"]), "refuse",
            stats, MAX_INFLIGHT,
        )  # type: ignore[arg-type]  # fmt: skip
        clock = [0.0]
        cache = PacketCache(Cache(size=1000, stale_window=120, client_timeout=60.0, prefetch=3))
        flow = CacheFlow(fe, cache, clock=lambda: clock[0])
        fe.cache = flow
        rng = random.Random(8767)
        queries = []
        for i in range(NAMES):
            q = dns.message.make_query(f"n{i}.example.test", "A")
            queries.append((q.to_wire(), replies_for(f"n{i}.example.test")))
        outcomes = dict(queries)
        answered = [0]
        sent_queries = 0
        max_flights = max_inflight = 0

        def send(_reply: bytes) -> None:
            answered[0] += 1

        for _step in range(STEPS):
            clock[0] += 0.01
            wire, _ = queries[min(int(rng.paretovariate(1.2)), NAMES) - 1]
            if fe.handle(wire, "127.0.0.1", "udp", send):
                sent_queries += 1
            max_flights = max(max_flights, len(flow.flights))
            max_inflight = max(max_inflight, stats.inflight)
            # End some forwards: most answer, some SERVFAIL, some give up (None). One phase in
            # ten is an outage: nothing ends until 200 wait (the limit refuses the rest).
            outage = (_step // 5000) % 10 == 9
            while fwd.pending and (len(fwd.pending) > 200 or (not outage and rng.random() < 0.3)):
                data, done = fwd.pending.pop(rng.randrange(len(fwd.pending)))
                roll = rng.random()
                outcome = outcomes[data]
                if roll >= 0.7:
                    done(None)
                elif roll < 0.6:
                    done(data[:2] + outcome["good"][2:])
                else:
                    done(data[:2] + outcome["servfail"][2:])
            assert len(cache) <= 1000
        for _data, done in fwd.pending:
            done(None)
        fwd.pending.clear()
        flow.close()
        return {
            "answered": answered[0], "sent": sent_queries, "flights": len(flow.flights),
            "inflight": stats.inflight, "max_flights": max_flights, "max_inflight": max_inflight,
            "upstream": fwd.sent, "hits": sum(cache.hits.values()),
            "stale": sum(cache.stale.values()), "refused": stats.rejected_inflight,
            "coalesced": cache.coalesced, "prefetches": sum(cache.prefetches.values()),
        }  # fmt: skip

    result = asyncio.run(run())
    assert result["answered"] == result["sent"] == STEPS, result  # one reply per query
    assert result["flights"] == 0 and result["inflight"] == 0, result
    assert result["max_flights"] <= MAX_INFLIGHT and result["max_inflight"] <= MAX_INFLIGHT
    # Every path really ran.
    for key in ("hits", "stale", "refused", "coalesced", "prefetches"):
        assert result[key] > 0, (key, result)
    assert result["upstream"] < STEPS // 2, result

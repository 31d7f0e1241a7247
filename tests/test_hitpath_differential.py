"""Differential: the same queries at the same (fake) times to two pldns, one reading UDP with
_mmsg (repeated cache hits answered in C, pldns/dns/hitpath.py), one through the event loop's
transport (every hit answered in Python), get the same bytes back and are counted the same.

unbound serves a static zone as the authority (answers, NODATA, NXDOMAIN with an SOA), with
a fixed record order so both caches store the same bytes. The clock steps across the zone's
TTLs (30 s to a day) and the SOA minimum, so entries age, expire and are fetched again.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from pldns.dns import listeners
from pldns.dns.cache import cache_key
from pldns.dns.wire import scan_query
from tests.fakes import clients
from tests.fakes.peers import Unbound
from tests.fakes.proc import free_port
from tests.test_cache_differential import Authority, make, question_pool, spell, zone_data
from tests.test_cache_e2e import FakeClock, answered_in_c, wait_until

# seconds from the start: within a second, across seconds, a TTL of 30 in its last 10 % (a
# prefetch) and past it, the SOA minimum (45), TTLs of 300 and 3600 about to end and ended
TIMES = (0.0, 0.3, 1.0, 1.0, 2.6, 27.5, 29.7, 30.2, 44.9, 61.0, 299.5, 300.4, 3599.9, 3600.5)


class FixedOrderAuthority(Authority):
    def command(self) -> list[str]:
        argv = super().command()
        conf = self.workdir / "unbound.conf"
        text = conf.read_text().replace("server:\n", "server:\n  rrset-roundrobin: no\n", 1)
        conf.write_text(text)
        return argv


@pytest.mark.skipif(not Unbound.available(), reason="unbound is not installed")
def test_hits_answered_in_c_are_the_python_answers_byte_for_byte(
    tmp_path: Path, pldns: Any, monkeypatch: pytest.MonkeyPatch, mmsg: ModuleType
) -> None:
    rng = random.Random(8767)
    auth = FixedOrderAuthority(tmp_path / "unbound", free_port(), zone_data(rng)).start()
    try:
        servers: dict[str, Any] = {}
        clocks: list[FakeClock] = []
        for way, io in (("c", mmsg), ("python", None)):
            monkeypatch.setattr(listeners, "BATCH_IO", io)
            server = pldns(
                upstreams=[auth.address],
                forward={"try_timeout": 1.0, "deadline": 3.0},
                cache={"prefetch": 3},
                in_process=True,
            )
            clock = FakeClock()
            server.call(lambda s=server, c=clock: setattr(s.app.frontend.cache, "clock", c))
            servers[way] = server
            clocks.append(clock)
        # One query per cache key (a prefetch then lands before that key is asked again).
        queries = {}
        for name, rdtype, flags in question_pool(rng):
            q = make(spell(name, rng), rdtype, flags)
            wire = q.to_wire()
            key = cache_key(wire, scan_query(wire))
            queries.setdefault(key, q)
        assert len(queries) > 1000
        asked = 0
        start = clocks[0].now
        for at in TIMES:
            for clock in clocks:
                clock.now = start + at
            for q in rng.sample(list(queries.values()), len(queries)):
                q.id = rng.randrange(65536)
                data = q.to_wire()
                got = {
                    way: clients.raw_udp(s.addr, data, timeout=3.0) for way, s in servers.items()
                }
                assert got["c"] is not None, (at, q.question)
                assert got["c"] == got["python"], (at, q.question, q.flags, q.edns)
                asked += 1
            for server in servers.values():
                assert wait_until(lambda s=server: not s.app.frontend.cache.flights)
        time.sleep(0.2)  # the last replies are counted just after they are sent

        def counts(server: Any) -> tuple[Any, ...]:
            stats, cache = server.app.stats, server.app.cache
            return (
                dict(stats.requests),
                dict(stats.responses),
                dict(cache.hits),
                cache.misses,
                dict(cache.prefetches),
                stats.duration["cache"].count,
                {key: entry.hits for key, entry in cache.entries.items()},
            )

        assert counts(servers["c"]) == counts(servers["python"])
        in_c = answered_in_c(servers["c"])
        hits = sum(servers["c"].app.cache.hits.values())
        assert in_c > hits // 2 and in_c > asked // 3, (in_c, hits, asked)
        assert answered_in_c(servers["python"]) == 0
        assert sum(servers["c"].app.cache.prefetches.values()) > 0  # prefetch decided in Python
    finally:
        auth.stop()

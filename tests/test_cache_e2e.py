"""The cache in a running pldns, against the fake upstream: hits, negative caching, keys,
0x20, TC, serve-stale, coalescing, prefetch, eviction, reload and flush.

pldns runs in-process so a test can give the cache a fake clock (`FakeClock`): TTLs, expiry
and the stale window move when the test says so; only the client-response timer and the
forwarder's deadline run on real time (short, with generous waits).
"""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from pldns.config import parse_config
from pldns.dns import listeners
from tests.fakes import clients
from tests.fakes.proc import REPO, InProcessPldns, PldnsProcess, base_config, free_port, merge
from tests.fakes.upstream import FakeUpstream

WWW = "www.example.test"
WWW_IP = "192.0.2.1"


@pytest.fixture(autouse=True, params=["transport", "batched"])
def udp_read(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, mmsg: Any) -> str:
    """Every test here runs both ways: UDP through the event loop's transport (each hit
    answered in Python), and through _mmsg with repeated hits answered in C
    (pldns/dns/hitpath.py), which is how the compiled build runs."""
    monkeypatch.setattr(listeners, "BATCH_IO", None if request.param == "transport" else mmsg)
    return str(request.param)


def answered_in_c(server: InProcessPldns) -> int:
    def count() -> int:
        udp = [listener.udp for listener in server.app.listeners]
        return sum(u.hit_path.answered for u in udp if getattr(u, "hit_path", None) is not None)

    return int(server.call(count))


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def start(pldns: Any, **overrides: Any) -> tuple[InProcessPldns, FakeClock]:
    server = pldns(in_process=True, **overrides)
    clock = FakeClock()

    def install() -> None:
        server.app.frontend.cache.clock = clock

    server.call(install)
    return server, clock


def wait_until(predicate: Any, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def flights(server: InProcessPldns) -> int:
    return int(server.call(lambda: len(server.app.frontend.cache.flights)))


def ask(server: Any, name: str, rdtype: str = "A", **kw: Any) -> dns.message.Message:
    return clients.udp(server.addr, clients.make_query(name, rdtype, **kw), timeout=5.0)


def test_a_hit_counts_the_ttl_down_and_is_not_asked_upstream(pldns, upstream) -> None:
    upstream.answer(WWW, WWW_IP)
    server, clock = start(pldns)
    first = ask(server, WWW)
    assert first.answer[0].ttl == 60 and clients.a_records(first) == {WWW_IP}
    clock.now += 12.5
    second = ask(server, WWW)
    assert second.answer[0].ttl == 48
    assert {rr.ttl for rr in second.authority + second.additional} == {48}
    clock.now += 40
    assert ask(server, WWW).answer[0].ttl == 8
    assert len(upstream.queries(WWW)) == 1
    clock.now += 8  # expired: asked again
    assert ask(server, WWW).answer[0].ttl == 60
    assert len(upstream.queries(WWW)) == 2
    stats = server.app.stats
    # A reply is counted just after it is sent, in pldns's thread: wait for the count.
    assert wait_until(lambda: stats.responses[("NOERROR", "upstream")] == 2)
    assert stats.responses[("NOERROR", "cache")] == 2


def test_negative_answers_are_cached_for_the_soa_minimum_capped(pldns, upstream) -> None:
    # The fake's SOA: TTL 60, MINIMUM 60; max_negative_ttl cuts it to 10.
    server, clock = start(pldns, cache={"max_negative_ttl": 10})
    name = "nope.example.test"
    first = ask(server, name)
    assert first.rcode() == dns.rcode.NXDOMAIN and first.authority[0].ttl == 60
    clock.now += 9
    again = ask(server, name)
    assert again.rcode() == dns.rcode.NXDOMAIN
    assert again.authority[0].rdtype == dns.rdatatype.SOA and again.authority[0].ttl == 1
    assert len(upstream.queries(name)) == 1
    clock.now += 1
    ask(server, name)
    assert len(upstream.queries(name)) == 2
    upstream.answer(WWW, WWW_IP)  # MX of www: NODATA (NOERROR, no answer, the SOA)
    for _ in range(2):
        nodata = ask(server, WWW, "MX")
        assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
        assert nodata.authority[0].rdtype == dns.rdatatype.SOA
    assert len(upstream.queries(WWW)) == 1
    assert server.app.cache.kinds["denial"] == 2


def test_do_cd_and_no_edns_queries_do_not_share_entries(pldns, upstream) -> None:
    upstream.answer(WWW, WWW_IP)
    server, _ = start(pldns)
    variants = {
        "no-edns": dict(use_edns=False),
        "edns": dict(use_edns=0),
        "do": dict(want_dnssec=True),
        "cd": dict(use_edns=0, flags=dns.flags.RD | dns.flags.CD),
    }
    for _ in range(2):
        for kw in variants.values():
            reply = ask(server, WWW, **kw)
            assert clients.a_records(reply) == {WWW_IP}
            assert (reply.edns >= 0) == (kw.get("use_edns") is not False)
    seen = upstream.queries(WWW)
    assert len(seen) == len(variants)  # one upstream query per variant, the repeats cached
    assert sorted((r.payload is not None, r.do, bool(r.flags & dns.flags.CD)) for r in seen) == [
        (False, False, False),
        (True, False, False),
        (True, False, True),
        (True, True, False),
    ]


def test_the_clients_0x20_spelling_comes_back_from_a_cached_entry(pldns, upstream) -> None:
    upstream.answer(WWW, WWW_IP)
    server, _ = start(pldns)
    ask(server, WWW)
    rng = random.Random(7)
    for _ in range(5):
        spelled = "".join(c.upper() if rng.random() < 0.5 else c for c in WWW)
        q = clients.make_query(spelled, "A")
        wire = clients.raw_udp(server.addr, q.to_wire(), timeout=5.0)
        assert wire is not None
        reply = dns.message.from_wire(wire)
        assert reply.id == q.id
        assert reply.question[0].name.to_text() == spelled + "."
        assert wire[12 : 12 + len(q.to_wire()) - 12] == q.to_wire()[12:]  # bytes, not just equal
    assert len(upstream.queries(WWW)) == 1


def test_a_truncated_reply_is_never_cached(pldns, upstream) -> None:
    big = "big.example.test"
    upstream.big(big)
    server, _ = start(pldns)
    for _ in range(2):  # no EDNS: 512 bytes, the upstream truncates, pldns relays TC
        reply = ask(server, big, "TXT", use_edns=False)
        assert reply.flags & dns.flags.TC
    assert len(upstream.queries(big, transport="udp")) == 2
    assert server.app.cache.kinds["success"] == 0
    for _ in range(2):  # EDNS 4096: fetched whole over TCP, stored, then served from the cache
        reply = clients.tcp(server.addr, clients.make_query(big, "TXT", use_edns=0, payload=4096))
        assert not reply.flags & dns.flags.TC and len(reply.answer[0]) == 40
    assert len(upstream.queries(big, transport="tcp")) == 1


def test_a_cached_big_answer_over_udp_stays_within_max_udp_size_on_every_hit(
    pldns, upstream
) -> None:
    big = "big.example.test"
    upstream.big(big)
    server, _ = start(pldns)
    q = clients.make_query(big, "TXT", use_edns=0, payload=4096)
    whole = clients.tcp(server.addr, q)  # stored whole (about 2.9 KB)
    assert not whole.flags & dns.flags.TC and len(whole.answer[0]) == 40
    asked = len(upstream.queries(big))
    for i in range(4):  # the scan path, then the repeated bytes (and C, which hands it back)
        q.id = 300 + i
        wire = clients.raw_udp(server.addr, q.to_wire(), timeout=5.0)
        assert wire is not None and len(wire) <= 1232, f"hit {i}: {len(wire or b'')} bytes"
        reply = dns.message.from_wire(wire)
        assert reply.flags & dns.flags.TC and reply.id == q.id and reply.answer == []
    assert len(upstream.queries(big)) == asked  # every one a hit


def test_servfail_is_cached_for_servfail_ttl(pldns, upstream) -> None:
    name = "broken.example.test"
    upstream.fail(name, dns.rcode.SERVFAIL)
    server, clock = start(pldns, cache={"servfail_ttl": 3})
    assert ask(server, name).rcode() == dns.rcode.SERVFAIL
    clock.now += 2
    assert ask(server, name).rcode() == dns.rcode.SERVFAIL
    assert len(upstream.queries(name)) == 1
    clock.now += 1
    assert ask(server, name).rcode() == dns.rcode.SERVFAIL
    assert len(upstream.queries(name)) == 2


def test_serve_stale_while_the_upstream_is_black_holed_until_the_window_ends(
    pldns, upstream
) -> None:
    upstream.answer(WWW, WWW_IP)
    server, clock = start(
        pldns,
        cache={"stale_window": 100, "stale_ttl": 30, "client_timeout": 0.3},
        forward={"try_timeout": 0.4, "deadline": 1.0},
    )
    ask(server, WWW)
    clock.now += 70  # expired 10 s ago
    upstream.blackhole(WWW)
    began = time.monotonic()
    stale = ask(server, WWW)
    assert time.monotonic() - began < 0.95, "the client-response timer should answer first"
    assert stale.rcode() == dns.rcode.NOERROR and clients.a_records(stale) == {WWW_IP}
    assert stale.answer[0].ttl == 30
    assert wait_until(lambda: flights(server) == 0)  # the refresh gave up (deadline)
    asked = len(upstream.queries(WWW))
    clock.now += 1  # within the failure recheck time (stale_ttl): stale at once, not asked
    began = time.monotonic()
    again = ask(server, WWW)
    assert clients.a_records(again) == {WWW_IP} and again.answer[0].ttl == 30
    assert time.monotonic() - began < 0.25
    assert len(upstream.queries(WWW)) == asked
    clock.now += 30  # the recheck time is over: asked again, stale after the timer
    assert clients.a_records(ask(server, WWW)) == {WWW_IP}
    assert wait_until(lambda: flights(server) == 0)
    assert len(upstream.queries(WWW)) > asked
    assert server.app.cache.stale["success"] == 3
    clock.now = 1000 + 60 + 100  # expiry + stale_window: nothing stale any more
    gone = ask(server, WWW)
    assert gone.rcode() == dns.rcode.SERVFAIL and not gone.answer
    assert server.app.cache.stale["success"] == 3
    assert len(server.app.cache) == 0


def test_stale_when_every_upstream_says_servfail(pldns, upstream) -> None:
    upstream.answer(WWW, WWW_IP)
    server, clock = start(pldns, cache={"client_timeout": 10})
    ask(server, WWW)
    clock.now += 61
    upstream.fail(WWW, dns.rcode.SERVFAIL)
    reply = ask(server, WWW)
    assert clients.a_records(reply) == {WWW_IP} and reply.answer[0].ttl == 30
    # The SERVFAIL did not replace the stale answer.
    assert server.app.cache.kinds["servfail"] == 0 and server.app.cache.kinds["success"] == 1
    assert server.app.cache.stale["success"] == 1


def test_a_slow_upstream_gets_a_stale_answer_after_client_timeout_then_refreshes(
    pldns, upstream
) -> None:
    upstream.answer(WWW, WWW_IP)
    server, clock = start(
        pldns, cache={"client_timeout": 0.2}, forward={"try_timeout": 3.0, "deadline": 4.0}
    )
    ask(server, WWW)
    clock.now += 61
    upstream.answer(WWW, "192.0.2.99", delay=1.0)
    began = time.monotonic()
    reply = ask(server, WWW)
    assert time.monotonic() - began < 0.9
    assert clients.a_records(reply) == {WWW_IP} and reply.answer[0].ttl == 30
    assert wait_until(lambda: flights(server) == 0)
    fresh = ask(server, WWW)  # the late answer refreshed the entry
    assert clients.a_records(fresh) == {"192.0.2.99"} and fresh.answer[0].ttl == 60
    assert len(upstream.queries(WWW)) == 2


def test_fifty_identical_queries_in_flight_make_one_upstream_query(pldns, upstream) -> None:
    upstream.answer(WWW, WWW_IP, delay=0.5)
    server, _ = start(pldns, forward={"try_timeout": 2.0, "deadline": 3.0})
    rng = random.Random(3)
    sent: dict[int, bytes] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5.0)
        sock.connect(server.addr)
        for i in range(50):
            spelled = "".join(c.upper() if rng.random() < 0.5 else c for c in WWW)
            q = clients.make_query(spelled, "A")
            q.id = 1000 + i
            wire = q.to_wire()
            sent[q.id] = wire
            sock.send(wire)
        got: dict[int, bytes] = {}
        while len(got) < 50:
            data = sock.recv(4096)
            got[int.from_bytes(data[:2], "big")] = data
    assert set(got) == set(sent)
    for qid, wire in sent.items():
        reply = dns.message.from_wire(got[qid])
        assert clients.a_records(reply) == {WWW_IP}
        assert got[qid][12 : len(wire)] == wire[12:]  # each with its own spelling
    assert len(upstream.queries(WWW)) == 1
    assert server.app.cache.coalesced == 49
    assert wait_until(lambda: server.app.stats.inflight == 0)
    assert flights(server) == 0


def test_eviction_keeps_the_size_bound(pldns, upstream) -> None:
    names = [f"n{i}.example.test" for i in range(20)]
    for name in names:
        upstream.answer(name, WWW_IP)
    server, _ = start(pldns, cache={"size": 5})
    for name in names:
        ask(server, name)
    cache = server.app.cache
    assert len(cache) == 5 and cache.evictions["success"] == 15
    ask(server, names[-1])  # the newest is still there
    ask(server, names[0])  # the oldest was evicted
    assert len(upstream.queries(names[-1])) == 1 and len(upstream.queries(names[0])) == 2


def test_a_popular_entry_is_prefetched_once_before_it_expires(pldns, upstream) -> None:
    upstream.answer(WWW, WWW_IP)
    server, clock = start(pldns, cache={"prefetch": 3})
    ask(server, WWW)
    for _ in range(3):
        clock.now += 1
        ask(server, WWW)
    assert len(upstream.queries(WWW)) == 1
    clock.now = 1000 + 55  # the last 10 % of 60 s
    assert ask(server, WWW).answer[0].ttl == 5  # answered from the cache at once ...
    assert len(upstream.wait_for(2, WWW)) == 2  # ... and refreshed in the background
    assert wait_until(lambda: flights(server) == 0)
    clock.now += 1
    assert ask(server, WWW).answer[0].ttl == 59  # the refreshed entry
    clock.now = 1000 + 61  # the old entry would have expired by now
    assert ask(server, WWW).answer[0].ttl == 54
    assert len(upstream.queries(WWW)) == 2
    assert server.app.cache.prefetches["success"] == 1


def test_a_reload_that_owns_a_name_drops_its_cached_entries(pldns, upstream) -> None:
    name = "api.example.test"
    upstream.answer(name, WWW_IP)
    upstream.answer(WWW, WWW_IP)
    server, _ = start(pldns)
    for _ in range(3):  # hits: the exact query bytes are remembered for the fast path
        ask(server, name)
    ask(server, name, "AAAA")
    ask(server, WWW)
    assert len(server.app.cache) == 3
    assert len(server.app.frontend.cache.raw) == 1
    config = server.app.config
    raw = merge(
        base_config(server.host, server.port, [upstream.address]),
        {"services": {"api": {"domains": [name], "static": ["10.9.9.9"]}}},
    )

    async def reload() -> None:
        await server.app.apply(parse_config(raw))

    server.call(lambda: server.loop.create_task(reload()))
    assert wait_until(lambda: server.app.config is not config)
    assert wait_until(lambda: len(server.app.cache) == 1)  # only www is left
    assert clients.a_records(ask(server, name)) == {"10.9.9.9"}
    assert len(upstream.queries(name)) == 2  # A and AAAA once each, never again


def test_a_reload_that_lowers_max_udp_size_applies_to_repeated_hits(pldns, upstream) -> None:
    big = "big.example.test"
    upstream.big(big)
    server, _ = start(pldns, forward={"max_udp_size": 4096})
    q = clients.make_query(big, "TXT", use_edns=0, payload=4096)
    sizes = []
    for i in range(3):  # fetched whole (TCP upstream), then hits: the bytes are remembered
        q.id = 400 + i
        wire = clients.raw_udp(server.addr, q.to_wire(), timeout=5.0)
        assert wire is not None
        sizes.append(len(wire))
    assert all(size > 1232 for size in sizes) and len(server.app.frontend.cache.raw) == 1
    config = server.app.config
    lowered = merge(base_config(server.host, server.port, [upstream.address]), {})

    async def reload() -> None:
        await server.app.apply(parse_config(lowered))  # max_udp_size back to 1232

    server.call(lambda: server.loop.create_task(reload()))
    assert wait_until(lambda: server.app.config is not config)
    for i in range(3):
        q.id = 500 + i
        wire = clients.raw_udp(server.addr, q.to_wire(), timeout=5.0)
        assert wire is not None and len(wire) <= 1232, f"hit {i} after the reload"
        assert dns.message.from_wire(wire).flags & dns.flags.TC


def test_flush_over_http_and_the_cli(tmp_path, upstream: FakeUpstream) -> None:
    upstream.answer(WWW, WWW_IP)
    port, http_port = free_port(), free_port()
    config = merge(
        base_config("127.0.0.1", port, [upstream.address]),
        {"http": {"listen": f"127.0.0.1:{http_port}"}},
    )
    server = PldnsProcess(config, tmp_path).start()
    try:
        for _ in range(3):
            ask(server, WWW)
        assert len(upstream.queries(WWW)) == 1
        url = f"http://127.0.0.1:{http_port}"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"{url}/status", timeout=5) as resp:
            doc = json.loads(resp.read())
        assert doc["cache"]["entries"] == 1 and doc["cache"]["hit_ratio"] == pytest.approx(
            2 / 3, abs=1e-3
        )
        with pytest.raises(urllib.error.HTTPError) as err:
            opener.open(f"{url}/cache/flush", timeout=5)  # GET: not allowed
        assert err.value.code == 405
        out = subprocess.run(
            [sys.executable, "-m", "pldns", "cache", "flush", "--url", url],
            capture_output=True, text=True, timeout=20, cwd=REPO,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert "1 entries dropped" in out.stdout
        ask(server, WWW)
        assert len(upstream.queries(WWW)) == 2
        request = urllib.request.Request(f"{url}/cache/flush", data=b"", method="POST")
        with opener.open(request, timeout=5) as resp:
            assert json.loads(resp.read()) == {"flushed": 1}
        status = subprocess.run(
            [sys.executable, "-m", "pldns", "status", "--url", url],
            capture_output=True, text=True, timeout=20, cwd=REPO,
        )  # fmt: skip
        assert "CACHE     0/100000 entries" in status.stdout
        unreachable = subprocess.run(
            [sys.executable, "-m", "pldns", "cache", "flush", "--url", f"127.0.0.1:{free_port()}"],
            capture_output=True, text=True, timeout=20, cwd=REPO,
        )  # fmt: skip
        assert unreachable.returncode == 2
    finally:
        server.check_clean_exit()


def test_repeated_query_bytes_take_the_fast_path_with_the_same_answer(
    pldns, upstream, udp_read: str
) -> None:
    upstream.answer(WWW, WWW_IP)
    server, clock = start(pldns, cache={"prefetch": 2})
    q = clients.make_query(WWW, "A", use_edns=0)
    wires = []
    for i in range(5):
        q.id = 100 + i
        wire = clients.raw_udp(server.addr, q.to_wire(), timeout=5.0)
        assert wire is not None and wire[:2] == q.id.to_bytes(2, "big")
        wires.append(wire)
        clock.now += 1
    assert len(server.app.frontend.cache.raw) == 1
    assert all(clients.a_records(dns.message.from_wire(w)) == {WWW_IP} for w in wires)
    assert [dns.message.from_wire(w).answer[0].ttl for w in wires] == [60, 59, 58, 57, 56]
    assert wait_until(lambda: server.app.stats.requests[("udp", "A")] == 5)
    # the third on: the same bytes seen hit before (in C when UDP is read with _mmsg)
    assert answered_in_c(server) == (3 if udp_read == "batched" else 0)
    clock.now = 1000 + 55  # due for a prefetch: the fast path starts it too
    q.id = 200
    assert clients.raw_udp(server.addr, q.to_wire(), timeout=5.0) is not None
    assert len(upstream.wait_for(2, WWW)) == 2
    assert server.app.cache.prefetches["success"] == 1
    assert server.app.stats.responses[("NOERROR", "cache")] == 5
    assert server.app.cache.hits["success"] == 5
    assert server.app.stats.duration["cache"].count == 5


def test_a_client_outside_allow_gets_refused_even_for_a_hot_cached_query(pldns, upstream) -> None:
    upstream.answer(WWW, WWW_IP)
    server, _ = start(pldns, allow=["127.0.0.1/32"])
    q = clients.make_query(WWW, "A")
    for _ in range(3):
        assert clients.a_records(clients.udp(server.addr, q)) == {WWW_IP}
    assert len(server.app.frontend.cache.raw) == 1  # the fast path knows these bytes
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.2", 0))
        sock.settimeout(5.0)
        sock.sendto(q.to_wire(), server.addr)
        reply = dns.message.from_wire(sock.recv(4096))
    assert reply.rcode() == dns.rcode.REFUSED and not reply.answer


def test_disabled_cache_forwards_every_query(pldns, upstream) -> None:
    upstream.answer(WWW, WWW_IP)
    server = pldns(in_process=True, cache={"enabled": False})
    for _ in range(3):
        ask(server, WWW)
    assert len(upstream.queries(WWW)) == 3
    assert server.app.frontend.cache is None

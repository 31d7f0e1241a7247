"""Reliability on loopback: active health checks, the TCP pool, TC fallback, abusive TCP
clients, the UDP size cap and the edges of #9. Each test failed on the code before #9."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from pldns.dns.forwarder import Forwarder
from pldns.dns.listeners import bind_socket
from pldns.dns.settings import Forward, HostPort
from pldns.dns.stats import Stats
from tests.fakes import clients
from tests.fakes.clients import a_records, make_query, raw_udp
from tests.fakes.proc import OWNED, OWNED_IPS, base_config, free_port
from tests.fakes.upstream import NXDOMAIN, Behaviour

FORWARDED = "www.example.test"
BIG = "big.example.test"
BLACKHOLE = Behaviour(blackhole=True)


def wait_until(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = check()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


class RawUdpUpstream:
    """A UDP-only upstream (nothing listens on its TCP port) answering with `make(query)`."""

    def __init__(self, make: Callable[[bytes], bytes | None]) -> None:
        self.make = make
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.received = 0
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while self.running:
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.received += 1
            reply = self.make(data)
            if reply is not None:
                self.sock.sendto(reply, peer)

    def stop(self) -> None:
        self.running = False
        self.thread.join(2.0)
        self.sock.close()


@pytest.fixture
def raw_upstream() -> Iterator[Callable[[Callable[[bytes], bytes | None]], RawUdpUpstream]]:
    made: list[RawUdpUpstream] = []

    def make(fn: Callable[[bytes], bytes | None]) -> RawUdpUpstream:
        made.append(RawUdpUpstream(fn))
        return made[-1]

    yield make
    for up in made:
        up.stop()


def truncated_reply(query: bytes) -> bytes:
    msg = dns.message.from_wire(query)
    reply = dns.message.make_response(msg)
    reply.flags |= dns.flags.TC
    return reply.to_wire()


# --- active health checks ---------------------------------------------------------------


def test_a_dead_upstream_is_taken_out_probed_and_brought_back(pldns, fake_upstreams) -> None:
    dead = fake_upstreams(default=BLACKHOLE)
    good = fake_upstreams()
    good.answer(FORWARDED, "192.0.2.1")
    server = pldns(
        upstreams=[dead.address, good.address],
        in_process=True,
        cache={"enabled": False},  # every query goes upstream
        forward={"try_timeout": 0.5, "deadline": 2.0, "health_interval": 0.2},
    )
    for _ in range(2):  # max_fails = 2: two queries wait one try_timeout each
        assert a_records(clients.udp(server.addr, FORWARDED, timeout=3.0)) == {"192.0.2.1"}
    up = server.call(lambda: server.app.forwarder.upstreams[0])
    assert server.call(lambda: up.stats.healthy) is False
    client_queries = len(dead.queries(FORWARDED))
    start = time.monotonic()
    for _ in range(20):
        assert a_records(clients.udp(server.addr, FORWARDED)) == {"192.0.2.1"}
    assert time.monotonic() - start < 0.5 * 20 / 4, "no query waits on the dead upstream"
    assert len(dead.queries(FORWARDED)) == client_queries, "no client query is a probe"
    probes = wait_until(lambda: [r for r in dead.queries(".") if r.qtype == 2])
    assert probes and probes[0].transport == "udp"
    wait_until(lambda: server.call(lambda: up.stats.probes[("udp", "fail")]) >= 2)
    dead.default = NXDOMAIN  # it comes back: the next probe sees it
    wait_until(lambda: server.call(lambda: up.stats.healthy), timeout=5.0)
    assert server.call(lambda: up.stats.probes[("udp", "ok")]) >= 1
    assert server.call(lambda: up.stats.last_probe) > 0
    dead.answer(FORWARDED, "192.0.2.99")
    assert a_records(clients.udp(server.addr, FORWARDED)) == {"192.0.2.99"}, "first again"


def test_everything_dead_gives_servfail_before_the_deadline(pldns, fake_upstreams) -> None:
    ups = [fake_upstreams(default=BLACKHOLE) for _ in range(2)]
    server = pldns(
        upstreams=[u.address for u in ups], forward={"try_timeout": 0.4, "deadline": 1.0}
    )
    for _ in range(3):
        start = time.monotonic()
        reply = clients.udp(server.addr, FORWARDED, timeout=3.0)
        took = time.monotonic() - start
        assert reply.rcode() == dns.rcode.SERVFAIL
        assert took < 1.0, f"SERVFAIL at {took:.3f}s, not before the 1 s deadline"


def test_questionless_formerr_is_an_answer_not_an_impostor(pldns, raw_upstream) -> None:
    def formerr(query: bytes) -> bytes:  # header only: our ID, QR, FORMERR, no question
        return query[:2] + b"\x80\x01" + b"\x00" * 8

    up = raw_upstream(formerr)
    server = pldns(upstreams=[up.address], forward={"try_timeout": 1.0, "deadline": 2.0})
    start = time.monotonic()
    reply = clients.udp(server.addr, FORWARDED, timeout=3.0)
    assert reply.rcode() == dns.rcode.FORMERR
    assert str(reply.question[0].name) == FORWARDED + "."
    assert time.monotonic() - start < 0.9, "waited for a timeout instead"
    assert up.received == 1


# --- TC -> TCP: pool, failover, TC=1 when TCP fails ---------------------------------------


def test_truncated_and_tcp_refused_gives_the_client_tc(pldns, raw_upstream) -> None:
    up = raw_upstream(truncated_reply)  # nothing listens on its TCP port: refused
    server = pldns(
        upstreams=[up.address], in_process=True, forward={"try_timeout": 0.5, "deadline": 2.0}
    )
    for _ in range(3):
        start = time.monotonic()
        reply = clients.tcp(server.addr, BIG, "TXT", timeout=3.0)
        assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.TC, reply
        assert time.monotonic() - start < 1.0
    forwarder = server.call(lambda: server.app.forwarder)
    stats = forwarder.upstreams[0].stats
    assert server.call(lambda: stats.healthy), "TCP failures do not take UDP out"
    assert server.call(lambda: stats.tcp_healthy) is False
    assert server.call(lambda: server.stats.truncated["tcp_failed"]) == 3
    reply = clients.udp(server.addr, FORWARDED)  # UDP still goes to it
    assert reply.flags & dns.flags.TC


def test_tcp_fallback_fails_over_to_the_next_upstream(pldns, raw_upstream, fake_upstreams) -> None:
    first = raw_upstream(truncated_reply)
    second = fake_upstreams()
    second.big(BIG)
    server = pldns(upstreams=[first.address, second.address])
    reply = clients.tcp(server.addr, BIG, "TXT", timeout=3.0)
    assert not reply.flags & dns.flags.TC and len(reply.answer[0]) == 40
    assert [r.transport for r in second.queries(BIG)] == ["tcp"]


def test_upstream_tcp_connections_are_pooled_and_pipelined(pldns, upstream) -> None:
    upstream.big(BIG)
    server = pldns(in_process=True, forward={"tcp_connections": 2}, cache={"enabled": False})
    with clients.tcp_connect(server.addr, timeout=5.0) as sock:
        queries = [make_query(BIG, "TXT", id=i) for i in range(1, 41)]
        sock.sendall(b"".join(clients.frame(q.to_wire()) for q in queries))
        replies = [clients.recv_frame(sock) for _ in queries]
    msgs = [dns.message.from_wire(r) for r in replies if r is not None]
    assert sorted(m.id for m in msgs) == list(range(1, 41))
    assert all(len(m.answer[0]) == 40 for m in msgs)
    tcp = upstream.queries(BIG, transport="tcp")
    assert len(tcp) == 40
    assert len({r.port for r in tcp}) <= 2, "at most tcp_connections connections, reused"
    opened = server.call(lambda: server.app.forwarder.upstreams[0].stats.tcp_opened)
    assert 1 <= opened <= 2


# --- UDP size -------------------------------------------------------------------------------


def test_no_udp_reply_is_larger_than_max_udp_size(pldns, raw_upstream) -> None:
    def huge(query: bytes) -> bytes:  # ~3 KB in one datagram, no TC: a careless upstream
        msg = dns.message.from_wire(query)
        reply = dns.message.make_response(msg)
        for i in range(40):
            reply.answer.append(
                dns.rrset.from_text(msg.question[0].name, 60, "IN", "TXT", f'"{i:060d}"')
            )
        return reply.to_wire(max_size=65535)

    up = raw_upstream(huge)
    server = pldns(upstreams=[up.address])
    query = make_query(BIG, "TXT", use_edns=0, payload=65000)
    reply = raw_udp(server.addr, query.to_wire(), timeout=3.0)
    assert reply is not None and len(reply) <= 1232
    assert dns.message.from_wire(reply).flags & dns.flags.TC


# --- TCP clients ----------------------------------------------------------------------------


def test_slowloris_is_closed_and_fresh_clients_are_served(pldns) -> None:
    server = pldns(
        in_process=True, tcp={"idle_timeout": 3.0, "query_timeout": 0.5, "max_connections": 5}
    )
    wire = clients.frame(make_query(OWNED, "A").to_wire())
    slow = [clients.tcp_connect(server.addr) for _ in range(5)]  # the whole cap
    try:
        start = time.monotonic()
        closed: set[int] = set()
        while len(closed) < len(slow) and time.monotonic() - start < 4.0:
            for i, sock in enumerate(slow):  # one byte every 0.1 s: never a whole query
                if i in closed:
                    continue
                try:
                    sock.send(wire[:1])
                except OSError:
                    closed.add(i)
            time.sleep(0.1)
        assert len(closed) == len(slow), "a byte at a time kept connections open"
        assert time.monotonic() - start < 2.5
    finally:
        for sock in slow:
            sock.close()
    reply = clients.tcp(server.addr, OWNED)
    assert a_records(reply) == set(OWNED_IPS)
    assert server.call(lambda: server.stats.tcp_closed["slow"]) == 5


def test_idle_counts_from_the_last_complete_query(pldns) -> None:
    # After a complete query, the first bytes of the next one start the query_timeout clock
    # (1 s) and are not activity: they neither restart the idle clock (4 s from the last
    # reply, which would close at ~3.5 s after them) nor is the query clock counted from
    # the last complete query (which would close ~0.5 s after them). The bounds are wide
    # apart on purpose: the lower one cannot be broken by load (pldns sees the bytes after
    # `sent`, and CLOCK_MONOTONIC is one clock for both processes, so load only makes the
    # close later); the upper one leaves 1.5 s for a loaded machine to be late and still
    # sits 1 s below the idle restart. (It was 1 s vs < 1.8 s, and failed under 2 CPU hogs.)
    server = pldns(tcp={"idle_timeout": 4.0, "query_timeout": 1.0})
    wire = clients.frame(make_query(OWNED, "A").to_wire())
    with clients.tcp_connect(server.addr) as sock:
        sock.sendall(wire)
        assert clients.recv_frame(sock) is not None
        time.sleep(0.5)
        sent = time.monotonic()
        sock.sendall(wire[:3])  # a partial query does not count as activity
        closed = clients.wait_closed(sock, timeout=8.0)
        took = time.monotonic() - sent
    assert closed is not None, "a partial query kept the connection open"
    assert 0.95 <= took < 2.5, f"closed {took:.2f}s after the partial query, not ~1s"


def test_a_client_that_never_reads_is_cut_off_and_counted(pldns, upstream) -> None:
    upstream.big(BIG)
    server = pldns(in_process=True, tcp={"idle_timeout": 1.0, "max_queued_bytes": 65537})
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(server.addr)
    sock.settimeout(0.2)
    query = clients.frame(make_query(BIG, "TXT").to_wire())
    end = time.monotonic() + 10.0
    try:
        while time.monotonic() < end:  # pipeline queries, never read
            try:
                sock.send(query * 20)
            except (TimeoutError, BlockingIOError):
                pass
            except OSError:
                break
            if server.call(lambda: server.stats.tcp_closed["unread"]):
                break
    finally:
        sock.close()
    wait_until(lambda: server.call(lambda: server.stats.tcp_closed["unread"]) == 1)
    wait_until(lambda: server.call(lambda: len(server.app.connections)) == 0)
    assert a_records(clients.tcp(server.addr, OWNED)) == set(OWNED_IPS)


# --- edges ----------------------------------------------------------------------------------


def test_owned_name_with_a_malformed_edns_option_list_is_formerr(pldns) -> None:
    server = pldns()
    query = make_query(OWNED, "A", use_edns=0)
    wire = bytearray(query.to_wire())
    # The OPT is last: append 3 bytes of a truncated option and fix RDLENGTH.
    wire += b"\x00\x0a\x00"
    wire[-5:-3] = (3).to_bytes(2, "big")
    reply = raw_udp(server.addr, bytes(wire), timeout=2.0)
    assert reply is not None
    assert dns.message.from_wire(reply).rcode() == dns.rcode.FORMERR


def test_a_new_forwarder_starts_with_every_upstream_healthy() -> None:
    # After a reload touching forward.* while an upstream was down, its gauge stayed 0.
    stats = Stats()
    address = HostPort("192.0.2.1", 53)
    stats.upstream(str(address)).healthy = False
    stats.upstream(str(address)).tcp_healthy = False
    forwarder = Forwarder([address], Forward(), stats)
    assert stats.upstream(str(address)).healthy and stats.upstream(str(address)).tcp_healthy
    forwarder.close()


def test_a_bind_failure_names_the_address_and_protocol() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        with pytest.raises(OSError) as err:
            bind_socket(HostPort("127.0.0.1", port), socket.SOCK_DGRAM)
    assert f"127.0.0.1:{port}" in str(err.value) and "UDP" in str(err.value)
    with pytest.raises(OSError) as err:
        bind_socket(HostPort("192.0.2.77", 5353), socket.SOCK_STREAM)  # not ours: EADDRNOTAVAIL
    assert "192.0.2.77:5353" in str(err.value) and "TCP" in str(err.value)


def test_upstream_state_changes_are_logged_once_with_the_cause(caplog) -> None:
    async def go() -> None:
        forwarder = Forwarder([HostPort("127.0.0.1", 9)], Forward(max_fails=2), Stats())
        forwarder._loop = asyncio.get_running_loop()
        from pldns.dns.attempt import Outcome

        up = forwarder.upstreams[0]
        for _ in range(50):
            forwarder._health(up, False, Outcome.TIMEOUT, 1.0, "udp timeout")
        forwarder.close()

    with caplog.at_level("WARNING", logger="pldns.forward"):
        asyncio.run(go())
    lines = [r.getMessage() for r in caplog.records if "is down" in r.getMessage()]
    assert len(lines) == 1 and "127.0.0.1:9" in lines[0] and "udp timeout" in lines[0]


def test_reload_onto_a_busy_http_port_keeps_the_endpoint_and_the_watcher(
    tmp_path, upstream
) -> None:
    from tests.test_operations import Ops, http_get
    from tests.test_operations import wait_until as wait_ops

    config = base_config("127.0.0.1", free_port(), [upstream.address])
    config["lifecycle"] = {**config["lifecycle"], "reload_poll": 0.2}
    server = Ops(config, tmp_path, name="ops-http")
    server.start()
    try:
        old = server.http_port
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            taken = busy.getsockname()[1]
            server.rewrite(http={"listen": f"127.0.0.1:{taken}"})
            assert wait_ops(lambda: "http.listen" in server.log(), timeout=5)
            assert http_get(old, "/healthz")[0] == 200, "the old endpoint was closed"
        # The watcher is alive: a later edit is still picked up.
        server.rewrite(services={"eci": {"domains": [OWNED], "static": ["10.7.7.7"]}})
        assert wait_ops(lambda: a_records(clients.udp(server.addr, OWNED)) == {"10.7.7.7"})
    finally:
        server.stop()
    assert "Traceback" not in server.log()


def test_workers_add_up_the_new_counters() -> None:
    from pldns.workerreport import merge_stats

    a, b = Stats(), Stats()
    a.tcp_closed["slow"] += 2
    b.tcp_closed["slow"] += 3
    b.truncated["tcp_failed"] += 1
    a.upstream("u").probes[("udp", "ok")] += 1
    b.upstream("u").probes[("udp", "ok")] += 2
    b.upstream("u").tcp_healthy = False
    a.upstream("u").last_probe, a.upstream("u").last_probe_ok = 5.0, True
    b.upstream("u").last_probe = 9.0
    merged = merge_stats([a, b])
    assert merged.tcp_closed["slow"] == 5 and merged.truncated["tcp_failed"] == 1
    up = merged.upstreams["u"]
    assert up.probes[("udp", "ok")] == 3 and up.tcp_healthy is False
    assert (up.last_probe, up.last_probe_ok) == (9.0, False)

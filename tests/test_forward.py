"""Forwarding through pldns to fake upstreams: relaying, what the upstream sees, TC and the
TCP fallback, failover and deadlines, impostor replies, and the in-flight bound.
"""

from __future__ import annotations

import collections
import itertools
import socket
import time

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from tests.fakes import clients
from tests.fakes.clients import a_records, make_query, raw_udp, rrsets_text
from tests.fakes.proc import OWNED, OWNED_IPS
from tests.fakes.upstream import IMPOSTOR_IP, Behaviour

FORWARDED = "www.example.test"
BIG = "big.example.test"
SLOW = "slow.example.test"
SPOOF = "spoof.example.test"
BLACKHOLE = Behaviour(blackhole=True)

COOKIE = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, bytes(range(8)))
KEEPALIVE = dns.edns.GenericOption(dns.edns.OptionType.KEEPALIVE, b"")
PADDING = dns.edns.GenericOption(dns.edns.OptionType.PADDING, b"\x00" * 16)
NSID = dns.edns.GenericOption(dns.edns.OptionType.NSID, b"")


def _raw_exchange(addr: tuple[str, int], wire: bytes, tcp: bool) -> bytes:
    if tcp:
        with clients.tcp_connect(addr) as sock:
            sock.sendall(clients.frame(wire))
            reply = clients.recv_frame(sock)
    else:
        reply = raw_udp(addr, wire, timeout=3.0)
    assert reply is not None
    return reply


# --- relaying -------------------------------------------------------------------------
@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
@pytest.mark.parametrize("name", [FORWARDED, "nx.example.test"], ids=["answer", "nxdomain"])
def test_reply_is_relayed_as_the_upstream_sent_it(pldns, upstream, tcp, name) -> None:
    upstream.answer(FORWARDED, "192.0.2.1", "192.0.2.2")
    server = pldns()
    query = make_query(name.upper(), "A", use_edns=0, payload=1232)
    reply = _raw_exchange(server.addr, query.to_wire(), tcp)

    (seen,) = upstream.queries(name)
    (sent,) = upstream.sent(name)
    assert seen.qname == name.upper() + ".", "the client's spelling is forwarded"
    assert reply[:2] == query.to_wire()[:2], "the client's ID must be restored"
    assert reply[2:] == sent.wire[2:], "the upstream's reply must be relayed unchanged"
    got, want = dns.message.from_wire(reply), dns.message.from_wire(sent.wire)
    for section in ("question", "answer", "authority", "additional"):
        assert rrsets_text(getattr(got, section)) == rrsets_text(getattr(want, section))
    assert got.rcode() == want.rcode()
    if name == FORWARDED:
        assert a_records(got) == {"192.0.2.1", "192.0.2.2"}
        assert got.authority and got.additional
    else:
        assert got.rcode() == dns.rcode.NXDOMAIN
        assert [r.rdtype for r in got.authority] == [dns.rdatatype.SOA]


def test_upstream_sees_random_ids_varied_ports_our_payload_and_no_hop_options(
    pldns, upstream
) -> None:
    upstream.answer(FORWARDED, "192.0.2.1")
    server = pldns()
    for _ in range(50):
        query = make_query(
            FORWARDED,
            "A",
            use_edns=0,
            payload=4096,
            want_dnssec=True,
            options=[COOKIE, KEEPALIVE, PADDING, NSID],
            id=4242,
        )
        query.flags |= dns.flags.CD
        reply = clients.udp(server.addr, query)
        assert reply.id == 4242
        assert a_records(reply) == {"192.0.2.1"}
    seen = upstream.queries(FORWARDED)
    assert len(seen) == 50
    ids = [r.qid for r in seen]
    assert len(set(ids)) >= 47, "IDs must be fresh per query"
    assert ids.count(4242) <= 1, "the client's ID must not be reused upstream"
    steps = {(b - a) % 65536 for a, b in itertools.pairwise(ids)}
    assert len(steps) >= 40, f"IDs look sequential: {ids}"
    assert len({r.port for r in seen}) >= 2, "queries must leave from more than one port"
    for r in seen:
        assert r.transport == "udp"
        assert r.payload == 1232, "pldns advertises its own payload size upstream"
        assert r.edns_version == 0
        assert r.do, "DO must be kept"
        assert r.flags & dns.flags.CD and r.flags & dns.flags.RD, "CD and RD must be kept"
        assert r.options == ((3, b""),), "hop-by-hop options must not be forwarded"


# --- big answers: TC and the TCP fallback ---------------------------------------------
def test_big_answer_over_udp_without_edns_is_truncated(pldns, upstream) -> None:
    upstream.big(BIG)
    server = pldns()
    query = make_query(BIG, "TXT")
    reply = raw_udp(server.addr, query.to_wire(), timeout=3.0)
    assert reply is not None and len(reply) <= 512
    msg = dns.message.from_wire(reply)
    assert msg.flags & dns.flags.TC
    assert msg.id == query.id and msg.rcode() == dns.rcode.NOERROR
    assert msg.answer == []
    assert {r.transport for r in upstream.queries(BIG)} == {"udp"}, "no TCP for a 512 client"


def test_edns_4096_gets_at_most_max_udp_size_over_udp(pldns, upstream) -> None:
    # A 37-byte query used to draw a 2.9 KB (up to 30 KB) UDP reply: amplification. Now the
    # reply is capped at forward.max_udp_size (1232) whatever the client advertises: TC=1.
    upstream.big(BIG)
    server = pldns(in_process=True)
    query = make_query(BIG, "TXT", use_edns=0, payload=65000)
    reply = raw_udp(server.addr, query.to_wire(), timeout=3.0)
    assert reply is not None and len(reply) <= 1232
    msg = dns.message.from_wire(reply)
    assert msg.flags & dns.flags.TC and msg.answer == []
    assert msg.edns == 0, "our OPT stays in the truncated reply"
    assert {r.transport for r in upstream.queries(BIG)} == {"udp"}, "no TCP fetch for it"
    assert server.call(lambda: server.stats.inflight) == 0


def test_big_answer_with_edns_4096_and_max_udp_size_4096_is_fetched_whole(pldns, upstream) -> None:
    upstream.big(BIG)
    server = pldns(forward={"max_udp_size": 4096})
    query = make_query(BIG, "TXT", use_edns=0, payload=4096)
    reply = raw_udp(server.addr, query.to_wire(), timeout=3.0)
    assert reply is not None and 1232 < len(reply) <= 4096
    msg = dns.message.from_wire(reply)
    assert not msg.flags & dns.flags.TC
    assert len(msg.answer[0]) == 40
    seen = upstream.queries(BIG)
    assert [r.transport for r in seen] == ["udp", "tcp"], "upstream TC -> retry over TCP"
    assert seen[0].qid != seen[1].qid, "the TCP retry gets its own fresh ID"


def test_big_answer_over_tcp_is_complete(pldns, upstream) -> None:
    upstream.big(BIG)
    server = pldns()
    reply = clients.tcp(server.addr, BIG, "TXT")
    assert not reply.flags & dns.flags.TC
    assert len(reply.answer[0]) == 40


def test_dig_gets_the_big_answer_by_retrying_over_tcp(pldns, upstream) -> None:
    if not clients.have("dig"):
        pytest.skip("dig is not installed")
    upstream.big(BIG)
    server = pldns()
    got = clients.dig(server.addr, BIG, "TXT")
    assert got.status == "NOERROR", got.text
    assert len(got.rdata("TXT")) == 40, got.text
    assert got.transport == "TCP", got.text
    truncated = clients.dig(server.addr, "+ignore", "+noedns", BIG, "TXT")
    assert "tc" in truncated.flags, truncated.text
    assert truncated.answer == [], truncated.text


# --- failover, deadlines, error replies -----------------------------------------------
def test_failover_when_the_first_upstream_never_answers(pldns, fake_upstreams) -> None:
    dead = fake_upstreams(default=BLACKHOLE)
    good = fake_upstreams()
    good.answer(FORWARDED, "192.0.2.1")
    # A long deadline: moving on after try_timeout (0.3 s) and waiting for the deadline (8 s)
    # are seconds apart, room a loaded machine cannot eat.
    server = pldns(
        upstreams=[dead.address, good.address], forward={"try_timeout": 0.3, "deadline": 8.0}
    )
    start = time.monotonic()
    reply = clients.udp(server.addr, FORWARDED, timeout=10.0)
    elapsed = time.monotonic() - start
    assert a_records(reply) == {"192.0.2.1"}
    assert len(dead.queries()) == 1 and len(good.queries()) == 1
    assert dead.queries()[0].qid != good.queries()[0].qid, "a fresh ID per attempt"
    assert 0.25 < elapsed < 5.0


@pytest.mark.parametrize("count", [1, 2])
@pytest.mark.parametrize("send", [clients.udp, clients.tcp], ids=["udp", "tcp"])
def test_only_blackholes_gives_servfail_within_the_deadline(
    pldns, fake_upstreams, count, send
) -> None:
    dead = [fake_upstreams(default=BLACKHOLE) for _ in range(count)]
    # The deadline cuts the attempts short: without it, 3-4 attempts of 1 s each would take
    # 3-4 s; with it, SERVFAIL comes at 1.2 s. The bound sits between, 1.3 s above 1.2 s.
    try_timeout, deadline = 1.0, 1.2
    server = pldns(
        upstreams=[d.address for d in dead],
        forward={"try_timeout": try_timeout, "deadline": deadline},
    )
    start = time.monotonic()
    reply = send(server.addr, FORWARDED, "A", timeout=10.0)
    elapsed = time.monotonic() - start
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert try_timeout < elapsed < deadline + 1.3
    attempts = [q for d in dead for q in d.queries()]
    assert len(attempts) >= 2
    assert len({q.qid for q in attempts}) == len(attempts), "a fresh ID per attempt"


@pytest.mark.parametrize("rcode", [dns.rcode.SERVFAIL, dns.rcode.REFUSED])
def test_error_reply_moves_on_to_the_next_upstream(pldns, fake_upstreams, rcode) -> None:
    bad = fake_upstreams(default=Behaviour(rcode=rcode))
    good = fake_upstreams()
    good.answer(FORWARDED, "192.0.2.1")
    server = pldns(upstreams=[bad.address, good.address])
    reply = clients.udp(server.addr, FORWARDED)
    assert reply.rcode() == dns.rcode.NOERROR
    assert a_records(reply) == {"192.0.2.1"}
    assert len(bad.queries()) == 1 and len(good.queries()) == 1


@pytest.mark.parametrize("rcode", [dns.rcode.SERVFAIL, dns.rcode.REFUSED])
def test_no_from_every_upstream_is_our_servfail_at_once(pldns, fake_upstreams, rcode) -> None:
    # An upstream's REFUSED is about us, not the client: relaying it would tell the client
    # that pldns refuses it (#11). When every upstream said no, the client gets SERVFAIL.
    bad = fake_upstreams(default=Behaviour(rcode=rcode))
    worse = fake_upstreams(default=Behaviour(rcode=dns.rcode.REFUSED))
    server = pldns(
        upstreams=[bad.address, worse.address], forward={"try_timeout": 5.0, "deadline": 8.0}
    )
    start = time.monotonic()
    reply = clients.udp(server.addr, FORWARDED, timeout=10.0)
    assert reply.rcode() == dns.rcode.SERVFAIL
    # A timeout would take 5 s; the answers come in milliseconds (4 s of room for load).
    assert time.monotonic() - start < 4.0, "an upstream's answer is not a timeout"
    assert len(bad.queries()) == 1, "an upstream that said no is not asked again"
    assert len(worse.queries()) == 1


# --- impostors ------------------------------------------------------------------------
def test_replies_with_wrong_id_or_question_are_ignored(pldns, upstream) -> None:
    upstream.answer(SPOOF, "192.0.2.7", impostors=True)
    server = pldns(in_process=True, cache={"enabled": False})  # every query goes upstream
    for _ in range(3):
        reply = clients.udp(server.addr, SPOOF)
        assert a_records(reply) == {"192.0.2.7"}
        assert IMPOSTOR_IP not in reply.to_text()
    assert len(upstream.sent(SPOOF, genuine=False)) == 6
    assert len(upstream.queries(SPOOF)) == 3, "the genuine reply arrived in the first try"

    def impostors() -> int:
        ups = server.app.forwarder.upstreams
        return sum(ch.impostors for up in ups for ch in up.channels)

    assert server.call(impostors) == 6


# --- the in-flight bound --------------------------------------------------------------
def test_inflight_bound_refuses_the_excess_then_recovers(pldns, upstream) -> None:
    upstream.answer(SLOW, "192.0.2.9", delay=1.0)
    upstream.answer(FORWARDED, "192.0.2.1")
    server = pldns(
        in_process=True, forward={"max_inflight": 2, "try_timeout": 2.0, "deadline": 3.0}
    )
    rcodes: collections.Counter[int] = collections.Counter()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(server.addr)
        for qid in range(1, 11):
            sock.send(make_query(SLOW, "A", id=qid).to_wire())
        # Owned names are answered locally: the bound does not apply to them.
        owned = clients.udp(server.addr, OWNED)
        assert a_records(owned) == set(OWNED_IPS)
        sock.settimeout(0.2)
        end = time.monotonic() + 15.0  # a cap for a loaded machine; idle, about 1 s
        ids = set()
        while sum(rcodes.values()) < 10 and time.monotonic() < end:
            try:
                msg = dns.message.from_wire(sock.recv(4096))
            except TimeoutError:
                continue
            ids.add(msg.id)
            rcodes[msg.rcode()] += 1
    assert ids == set(range(1, 11)), "every query gets exactly one reply"
    assert rcodes[dns.rcode.REFUSED] >= 1
    assert 1 <= rcodes[dns.rcode.NOERROR] <= 2
    assert rcodes[dns.rcode.REFUSED] + rcodes[dns.rcode.NOERROR] == 10
    assert server.call(lambda: server.stats.rejected_inflight) == rcodes[dns.rcode.REFUSED]
    assert server.call(lambda: server.stats.inflight) == 0
    # Once the slow ones finished, forwarding works again.
    assert a_records(clients.udp(server.addr, FORWARDED)) == {"192.0.2.1"}
    assert a_records(clients.udp(server.addr, SLOW, timeout=3.0)) == {"192.0.2.9"}

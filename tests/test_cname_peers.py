"""CNAME chains into owned names, served by real software: knotd (authoritative, one zone
DNSSEC-signed), unbound resolving through it, dnsmasq with cname=. pldns runs in process so
its counters can be read."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from pldns.dns.cname import REWRITTEN, SIGNED
from pldns.dns.table import Addresses, build_table
from tests.fakes import clients
from tests.fakes.authority import (
    IN_ZONE_ALIAS,
    LATE,
    LATE_ALIAS,
    PLAIN_ALIAS,
    PUBLIC_IPS,
    SIGNED_ALIAS,
    ChainDnsmasq,
    ChainUnbound,
    Knot,
)
from tests.fakes.proc import OWNED, OWNED_IPS, free_port


def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.02)
    return check()


def _started(peer):  # type: ignore[no-untyped-def]
    if not peer.available():
        pytest.skip(f"{peer.binary} is not installed")
    return peer.start()


@pytest.fixture
def knot(tmp_path: Path) -> Iterator[Knot]:
    server = Knot(tmp_path / "knot", free_port())
    try:
        yield _started(server)
    finally:
        server.stop()


@pytest.fixture
def chain_unbound(tmp_path: Path, knot: Knot) -> Iterator[ChainUnbound]:
    server = ChainUnbound(tmp_path / "unbound", free_port(), knot.addr)
    try:
        yield _started(server)
    finally:
        server.stop()


@pytest.fixture
def chain_dnsmasq(tmp_path: Path) -> Iterator[ChainDnsmasq]:
    server = ChainDnsmasq(tmp_path / "dnsmasq", free_port())
    try:
        yield _started(server)
    finally:
        server.stop()


def ask(server, name: str, rdtype: str = "A", dnssec: bool = False, tcp: bool = False):  # type: ignore[no-untyped-def]
    query = clients.make_query(name, rdtype, use_edns=0, want_dnssec=dnssec)
    return (clients.tcp if tcp else clients.udp)(server.addr, query, timeout=5.0)


def answer(msg: dns.message.Message) -> list[tuple[str, str, str]]:
    return [
        (str(rrset.name).lower().rstrip("."), dns.rdatatype.to_text(rrset.rdtype), rd.to_text())
        for rrset in msg.answer
        for rd in rrset
    ]


def assert_owned_end(msg: dns.message.Message, first: str) -> None:
    got = answer(msg)
    assert msg.rcode() == dns.rcode.NOERROR, msg
    assert got[0][:2] == (first, "CNAME"), msg
    assert {rd for name, t, rd in got if t == "A"} == set(OWNED_IPS), msg
    assert {name for name, t, _ in got if t == "A"} == {OWNED}, msg
    assert not set(PUBLIC_IPS) & {rd for _, _, rd in got}, msg
    assert all(rrset.ttl <= 30 for rrset in msg.answer), msg  # the owned TTL caps the chain


@pytest.mark.parametrize("cache", [True, False], ids=["cache", "no-cache"])
@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_knot_in_zone_chain_to_an_owned_name(pldns, knot, tcp, cache) -> None:
    direct = ask(knot, IN_ZONE_ALIAS)
    assert {rd for _, t, rd in answer(direct) if t == "A"} == set(PUBLIC_IPS)  # the public end
    server = pldns(upstreams=[knot.address], in_process=True, cache={"enabled": cache})
    assert_owned_end(ask(server, IN_ZONE_ALIAS, tcp=tcp), IN_ZONE_ALIAS)
    nodata = ask(server, IN_ZONE_ALIAS, "AAAA", tcp=tcp)
    assert [t for _, t, _ in answer(nodata)] == ["CNAME"]
    assert nodata.authority[0].rdtype == dns.rdatatype.SOA
    assert str(nodata.authority[0].name).rstrip(".") == OWNED
    assert server.stats.chains == {REWRITTEN: 2}
    assert server.app.leaks.total == 0  # the rewritten answer no longer leaks


def test_a_cached_rewritten_answer_stays_owned(pldns, knot) -> None:
    """The cache stores the rewritten reply: hits serve the owned end, TTLs counting down
    from the owned TTL, and the chain is not parsed again."""
    server = pldns(upstreams=[knot.address], in_process=True)
    first = ask(server, IN_ZONE_ALIAS)
    again = [ask(server, IN_ZONE_ALIAS.upper()), ask(server, IN_ZONE_ALIAS, tcp=True)]
    for msg in (first, *again):
        assert_owned_end(msg, IN_ZONE_ALIAS)
    assert str(again[0].question[0].name).rstrip(".") == IN_ZONE_ALIAS.upper()
    # A reply is counted just after it is sent, in pldns's thread: wait for the count.
    assert wait_until(lambda: server.stats.responses[("NOERROR", "cache")] == 2)
    assert server.stats.chains == {REWRITTEN: 1}


def test_cached_chains_are_dropped_when_their_end_gets_addresses(pldns, knot) -> None:
    """A chain to an owned name without addresses is relayed (when_unknown: forward) and
    cached; when the name gets addresses, the cached chain goes, and the next answer ends at
    the owned addresses."""
    services = {
        "eci": {"domains": [OWNED], "static": list(OWNED_IPS)},
        "acc": {"domains": [LATE]},
    }
    server = pldns(upstreams=[knot.address], in_process=True, services=services)
    for _ in range(2):  # the second from the cache
        msg = ask(server, LATE_ALIAS)
        assert {rd for _, t, rd in answer(msg) if t == "A"} == set(PUBLIC_IPS[:1]), msg
    assert wait_until(lambda: server.stats.responses[("NOERROR", "cache")] == 1)
    table = build_table(
        {"eci": [OWNED], "acc": [LATE]},
        {"eci": Addresses(v4=OWNED_IPS), "acc": Addresses(v4=("192.168.20.5",))},
        30,
    )
    server.call(lambda: server.app.swap_table(table))
    msg = ask(server, LATE_ALIAS)
    assert [t for _, t, _ in answer(msg)] == ["CNAME", "A"], msg
    assert answer(msg)[1] == (LATE, "A", "192.168.20.5")
    assert server.stats.chains == {REWRITTEN: 1}


def test_knot_unsigned_two_links_out_of_zone(pldns, knot) -> None:
    server = pldns(upstreams=[knot.address], in_process=True)
    msg = ask(server, PLAIN_ALIAS)
    assert_owned_end(msg, PLAIN_ALIAS)
    assert [t for _, t, _ in answer(msg)][:2] == ["CNAME", "CNAME"]


def test_knot_signed_chain_is_left_alone_and_counted(pldns, knot) -> None:
    server = pldns(upstreams=[knot.address], in_process=True)
    signed = ask(server, SIGNED_ALIAS, dnssec=True)
    direct = ask(knot, SIGNED_ALIAS, dnssec=True)
    assert any(rrset.rdtype == dns.rdatatype.RRSIG for rrset in signed.answer), signed
    assert answer(signed) == answer(direct)  # relayed as the upstream sent it
    assert server.stats.chains == {SIGNED: 1}
    # Without DO the same zone's answer carries no signature: rewritten.
    assert_owned_end(ask(server, SIGNED_ALIAS), SIGNED_ALIAS)
    assert server.stats.chains == {SIGNED: 1, REWRITTEN: 1}


def test_unbound_follows_the_chain_across_zones(pldns, chain_unbound) -> None:
    direct = ask(chain_unbound, SIGNED_ALIAS)
    assert {rd for _, t, rd in answer(direct) if t == "A"} == set(PUBLIC_IPS), direct
    server = pldns(upstreams=[chain_unbound.address], in_process=True)
    assert_owned_end(ask(server, SIGNED_ALIAS), SIGNED_ALIAS)
    assert_owned_end(ask(server, PLAIN_ALIAS), PLAIN_ALIAS)
    assert_owned_end(ask(server, IN_ZONE_ALIAS, tcp=True), IN_ZONE_ALIAS)
    assert server.stats.chains == {REWRITTEN: 3}
    assert server.app.leaks.total == 0
    if clients.have("dig"):
        got = clients.dig(server.addr, PLAIN_ALIAS, "A")
        assert got.status == "NOERROR" and set(got.rdata("A")) == set(OWNED_IPS), got.text
        assert OWNED + "." in got.rdata("CNAME"), got.text


def test_dnsmasq_cname_record(pldns, chain_dnsmasq) -> None:
    direct = ask(chain_dnsmasq, PLAIN_ALIAS)
    assert {rd for _, t, rd in answer(direct) if t == "A"} == set(PUBLIC_IPS[:1]), direct
    server = pldns(upstreams=[chain_dnsmasq.address], in_process=True)
    assert_owned_end(ask(server, PLAIN_ALIAS), PLAIN_ALIAS)
    assert server.stats.chains == {REWRITTEN: 1}


def test_ordinary_forwarded_answers_are_untouched(pldns, knot) -> None:
    server = pldns(upstreams=[knot.address], in_process=True)
    msg = ask(server, "eci-vpc.cn-hangzhou.aliyuncs.com.", "A")  # owned: never forwarded
    assert {rd for _, _, rd in answer(msg)} == set(OWNED_IPS)
    ns = ask(server, "aliyuncs.com", "NS")
    assert answer(ns) == answer(ask(knot, "aliyuncs.com", "NS"))
    assert not server.stats.chains
    assert not msg.flags & dns.flags.AD

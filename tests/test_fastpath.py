"""The owned-name fast path gives byte-for-byte the reply the full path gives."""

from __future__ import annotations

import itertools

import dns.flags
import dns.message
import dns.rdatatype
import pytest

from pldns.dns.answer import Local, Resolver
from pldns.dns.stats import Stats
from pldns.dns.table import Addresses, build_table

NAMES = ["eci-vpc.cn-hangzhou.aliyuncs.com", "vpc.cn-hangzhou.aliyuncs.com"]


def _resolver(**addresses: Addresses) -> Resolver:
    domains = {"eci": [NAMES[0]], "vpc": [NAMES[1]]}
    return Resolver(build_table(domains, addresses, 30, serial=7), "forward", Stats())


SINGLE = {
    "eci": Addresses(("10.0.0.1",), ("fd00::1",)),
    "vpc": Addresses(("10.0.0.2",)),  # no IPv6: AAAA is NODATA with the SOA
}


def _query(name: str, rdtype: str, rd: bool, ad: bool, cd: bool) -> bytes:
    q = dns.message.make_query(name, rdtype, use_edns=False)
    q.flags = (
        (dns.flags.RD if rd else 0) | (dns.flags.AD if ad else 0) | (dns.flags.CD if cd else 0)
    )
    return q.to_wire()


@pytest.mark.parametrize(
    ("name", "rdtype", "rd", "ad", "cd"),
    list(itertools.product(NAMES, ["A", "AAAA"], [True, False], [True, False], [True, False])),
)
def test_fast_reply_equals_full_reply(name: str, rdtype: str, rd: bool, ad: bool, cd: bool) -> None:
    resolver = _resolver(**SINGLE)
    data = _query(name, rdtype, rd, ad, cd)
    fast = resolver.fast(data, "udp")
    slow = resolver.resolve(data, "udp")
    assert isinstance(slow, Local)
    assert fast == slow.reply
    reply = dns.message.from_wire(fast)
    assert reply.id == dns.message.from_wire(data).id
    assert bool(reply.flags & dns.flags.RD) == rd and bool(reply.flags & dns.flags.CD) == cd
    assert not reply.flags & dns.flags.AD


@pytest.mark.parametrize(
    "data",
    [
        _query("EcI-vpc.cn-hangzhou.aliyuncs.com", "A", True, False, False),  # mixed case
        dns.message.make_query(NAMES[0], "A", use_edns=True).to_wire(),  # EDNS
        _query(NAMES[0], "TXT", True, False, False),  # other type
        _query("other.example.com", "A", True, False, False),  # not owned
    ],
    ids=["mixed-case", "edns", "txt", "not-owned"],
)
def test_everything_else_takes_the_full_path(data: bytes) -> None:
    assert _resolver(**SINGLE).fast(data, "udp") is None


def test_fast_path_rotates_and_counts() -> None:
    ips = tuple(f"10.0.0.{i}" for i in range(1, 5))
    resolver = _resolver(eci=Addresses(ips))
    data = _query(NAMES[0], "A", True, False, False)
    firsts = {
        dns.message.from_wire(resolver.fast(data, "udp") or b"").answer[0][0].address
        for _ in range(8)
    }
    assert firsts == set(ips)
    assert resolver.stats.requests[("udp", "A")] == 8


def test_big_answers_are_left_to_the_full_path() -> None:
    ips = tuple(f"10.0.{i // 250}.{i % 250 + 1}" for i in range(40))  # 40 x 16 B > 512
    resolver = _resolver(eci=Addresses(ips))
    data = _query(NAMES[0], "A", True, False, False)
    assert resolver.fast(data, "udp") is None
    slow = resolver.resolve(data, "udp")
    assert isinstance(slow, Local) and dns.message.from_wire(slow.reply).flags & dns.flags.TC


def test_owned_udp_answers_are_capped_at_max_udp_size_whatever_the_client_advertises() -> None:
    """100 addresses make a ~1.6 KB answer: a client advertising 4096 still gets at most
    forward.max_udp_size over UDP (TC=1, so it retries over TCP), and the whole RRset over TCP."""
    many = Addresses(tuple(f"10.0.{i // 250}.{i % 250 + 1}" for i in range(100)))
    resolver = _resolver(eci=many)
    query = dns.message.make_query(NAMES[0], "A", use_edns=0, payload=4096).to_wire()
    udp = resolver.resolve(query, "udp")
    tcp = resolver.resolve(query, "tcp")
    assert isinstance(udp, Local) and isinstance(tcp, Local)
    assert len(tcp.reply) > 1232
    full = dns.message.from_wire(tcp.reply)
    assert len(full.answer[0]) == 100 and not full.flags & dns.flags.TC
    assert len(udp.reply) <= 1232
    cut = dns.message.from_wire(udp.reply)
    assert cut.flags & dns.flags.TC
    resolver.max_udp_size = 4096  # the operator raised the cap: the client's 4096 applies
    assert len(resolver.resolve(query, "udp").reply) == len(tcp.reply)

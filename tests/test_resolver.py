"""Table-driven tests for the sans-IO resolver: owned answers, NODATA, errors, forwarding."""

from __future__ import annotations

import ipaddress
import itertools
import struct

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest

from pldns.dns.answer import SOURCE_LOCAL, SOURCE_OWNED, Local, Resolver
from pldns.dns.stats import Stats
from pldns.dns.table import Addresses, build_table
from pldns.dns.wire import OUR_PAYLOAD, Query

ECI = "eci-vpc.cn-hangzhou.aliyuncs.com."
ECI_PUBLIC = "eci.cn-hangzhou.aliyuncs.com."
VPC = "vpc-vpc.cn-hangzhou.aliyuncs.com."
V6ONLY = "ecs-vpc.cn-hangzhou.aliyuncs.com."
UNKNOWN = "acc-vpc.cn-hangzhou.aliyuncs.com."
BIG = "big.cn-hangzhou.aliyuncs.com."
TTL = 30
ECI_IPS = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
BIG_IPS = [f"10.1.0.{i}" for i in range(1, 41)]  # 40 A records: > 512 bytes, < 1232

TABLE = build_table(
    {
        "eci": [ECI.rstrip("."), ECI_PUBLIC.rstrip(".")],
        "vpc": [VPC.rstrip(".")],
        "ecs": [V6ONLY.rstrip(".")],
        "acc": [UNKNOWN.rstrip(".")],
        "big": [BIG.rstrip(".")],
    },
    {
        "eci": Addresses(v4=tuple(ECI_IPS)),
        "vpc": Addresses(v4=("10.0.1.1", "10.0.1.2"), v6=("fd00::1", "fd00::2")),
        "ecs": Addresses(v6=("fd00::5",)),
        "big": Addresses(v4=tuple(BIG_IPS)),
    },
    ttl=TTL,
    serial=2024,
)


def make_resolver(when_unknown: str = "forward") -> Resolver:
    return Resolver(TABLE, when_unknown, Stats())


def query(name: str = ECI, rdtype: str | int = "A", **kw) -> bytes:
    kw.setdefault("use_edns", False)
    return dns.message.make_query(name, rdtype, **kw).to_wire()


def ask(data: bytes, proto: str = "udp", when_unknown: str = "forward", resolver=None):
    resolver = resolver or make_resolver(when_unknown)
    out = resolver.resolve(data, proto)
    if isinstance(out, Local):
        return dns.message.from_wire(out.reply), out
    return None, out


def addresses(msg: dns.message.Message) -> list[str]:
    return [rd.address for rrset in msg.answer for rd in rrset]


# --- owned names: positive answers ------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "rdtype", "expected"),
    [
        (ECI, "A", ECI_IPS),
        (ECI_PUBLIC, "A", ECI_IPS),
        ("EcI-VPC.Cn-HangZhou.aliyuncs.com.", "A", ECI_IPS),
        (VPC, "A", ["10.0.1.1", "10.0.1.2"]),
        (VPC, "AAAA", ["fd00::1", "fd00::2"]),
        (V6ONLY, "AAAA", ["fd00::5"]),
        (ECI, "ANY", ECI_IPS),
        (VPC, "ANY", ["10.0.1.1", "10.0.1.2"]),
        (V6ONLY, "ANY", ["fd00::5"]),
    ],
    ids=[
        "a",
        "public-name",
        "mixed-case",
        "a-dual",
        "aaaa",
        "aaaa-v6-only",
        "any",
        "any-dual",
        "any-v6-only",
    ],
)
def test_owned_answers(name, rdtype, expected):
    msg, local = ask(query(name, rdtype))
    assert local.source == SOURCE_OWNED
    assert msg.rcode() == dns.rcode.NOERROR
    assert msg.flags & dns.flags.AA and msg.flags & dns.flags.QR and msg.flags & dns.flags.RA
    assert not msg.flags & (dns.flags.AD | dns.flags.TC)
    assert sorted(addresses(msg)) == sorted(expected)
    assert len(msg.answer) == 1
    rrset = msg.answer[0]
    assert rrset.ttl == TTL
    v6 = ":" in expected[0]
    assert rrset.rdtype == (dns.rdatatype.AAAA if v6 else dns.rdatatype.A)
    assert str(rrset.name) == name  # the client's spelling echoed
    assert str(msg.question[0].name) == name
    assert msg.authority == []


def test_rotation_starts_each_answer_at_another_address():
    resolver = make_resolver()
    firsts = []
    for _ in range(len(ECI_IPS) * 2):
        msg, _ = ask(query(ECI), resolver=resolver)
        got = addresses(msg)
        assert sorted(got) == ECI_IPS
        firsts.append(got[0])
    assert set(firsts) == set(ECI_IPS)
    assert all(a != b for a, b in itertools.pairwise(firsts))


# --- owned names: NODATA and refusals ---------------------------------------------------


@pytest.mark.parametrize(
    ("name", "rdtype"),
    [
        (ECI, "AAAA"),
        (ECI, "TXT"),
        (ECI, "MX"),
        (ECI, 65),
        (ECI, 64),
        (ECI, "NS"),
        (ECI, "CNAME"),
        (ECI, "PTR"),
        (V6ONLY, "A"),
    ],
    ids=["aaaa-no-v6", "txt", "mx", "https", "svcb", "ns", "cname", "ptr", "a-v6-only"],
)
def test_nodata_with_soa(name, rdtype):
    msg, local = ask(query(name, rdtype))
    assert local.source == SOURCE_OWNED
    assert msg.rcode() == dns.rcode.NOERROR
    assert msg.flags & dns.flags.AA
    assert msg.answer == []
    assert len(msg.authority) == 1
    soa = msg.authority[0]
    assert soa.rdtype == dns.rdatatype.SOA and soa.ttl == TTL
    assert str(soa.name) == name
    assert soa[0].minimum == TTL
    assert soa[0].serial == 2024
    assert str(soa[0].mname) == name


@pytest.mark.parametrize("rdtype", ["AXFR", "IXFR"])
def test_zone_transfer_refused(rdtype):
    msg, local = ask(query(ECI, rdtype))
    assert local.source == SOURCE_LOCAL
    assert msg.rcode() == dns.rcode.REFUSED
    assert str(msg.question[0].name) == ECI


# --- names that are not ours ------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "qtype"),
    [
        (query("x." + ECI), 1),
        (query("cn-hangzhou.aliyuncs.com."), 1),
        (query("example.com.", "AAAA"), 28),
        (query("version.bind.", "TXT", rdclass="CH"), 16),
        (query(UNKNOWN), 1),
    ],
    ids=["child", "parent", "unrelated", "class-ch-not-owned", "unknown-service"],
)
def test_forwarded(data, qtype):
    msg, out = ask(data)
    assert msg is None
    assert isinstance(out, Query) and out.qtype == qtype


def test_unknown_service_with_servfail_policy():
    msg, local = ask(query(UNKNOWN, "A", use_edns=0), when_unknown="servfail")
    assert local.source == SOURCE_LOCAL
    assert msg.rcode() == dns.rcode.SERVFAIL
    assert str(msg.question[0].name) == UNKNOWN
    assert msg.edns == 0


# --- EDNS and truncation ----------------------------------------------------------------


def test_edns_version_1_is_badvers():
    data = query(ECI, use_edns=1, payload=4096)
    msg, local = ask(data)
    assert local.source == SOURCE_LOCAL
    assert msg.rcode() == dns.rcode.BADVERS
    assert msg.edns == 0 and msg.payload == OUR_PAYLOAD
    assert msg.answer == []


@pytest.mark.parametrize("do", [False, True], ids=["plain", "do"])
def test_owned_reply_carries_opt(do):
    msg, _ = ask(query(ECI, use_edns=0, payload=4096, want_dnssec=do))
    assert msg.edns == 0 and msg.payload == OUR_PAYLOAD
    assert bool(msg.ednsflags & dns.flags.DO) == do
    assert not msg.flags & dns.flags.AD
    assert sorted(addresses(msg)) == ECI_IPS


@pytest.mark.parametrize(
    ("kw", "proto", "truncated"),
    [
        ({}, "udp", True),
        ({"use_edns": 0, "payload": 512}, "udp", True),
        ({"use_edns": 0, "payload": 4096}, "udp", False),
        ({"use_edns": 0, "payload": 1232}, "udp", False),
        ({}, "tcp", False),
    ],
    ids=["no-edns", "edns-512", "edns-4096", "edns-1232", "tcp"],
)
def test_udp_truncation(kw, proto, truncated):
    data = query("BiG.cn-hangzhou.aliyuncs.com.", **kw)
    msg, local = ask(data, proto=proto)
    assert bool(msg.flags & dns.flags.TC) == truncated
    assert str(msg.question[0].name) == "BiG.cn-hangzhou.aliyuncs.com."
    assert msg.rcode() == dns.rcode.NOERROR
    if truncated:
        assert msg.answer == []
        assert len(local.reply) <= 512
    else:
        assert sorted(addresses(msg), key=ipaddress.ip_address) == BIG_IPS
    assert msg.edns == kw.get("use_edns", -1)


# --- malformed input through the resolver -----------------------------------------------

_NAME = dns.name.from_text(ECI).to_wire()
_OPT = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"


@pytest.mark.parametrize(
    ("data", "rcode", "qd"),
    [
        (struct.pack("!6H", 7, 0x0100, 0, 0, 0, 0), dns.rcode.FORMERR, 0),
        (struct.pack("!6H", 7, 0x0100, 2, 0, 0, 0) + (_NAME + b"\x00\x01\x00\x01") * 2, 1, 0),
        (struct.pack("!6H", 7, 0x2100, 1, 0, 0, 0) + _NAME + b"\x00\x01\x00\x01", 4, 0),
        (struct.pack("!6H", 7, 0x0100, 1, 0, 0, 1) + _NAME + b"\x00\x01\x00\x01" + _OPT * 2, 1, 0),
        (struct.pack("!6H", 7, 0x0100, 1, 0, 0, 1) + _NAME + b"\x00\x01\x00\x01\x03abc\x00", 1, 0),
        (struct.pack("!6H", 7, 0x0100, 1, 0, 0, 1) + _NAME + b"\x00\x01\x00\x01\x00\x00\x29", 1, 0),
    ],
    ids=["qdcount-0", "qdcount-2", "update", "two-opts", "record-cut", "opt-cut"],
)
def test_malformed_queries_get_parseable_errors(data, rcode, qd):
    resolver = make_resolver()
    msg, local = ask(data, resolver=resolver)
    assert local.source == SOURCE_LOCAL
    assert msg.id == 7 and msg.rcode() == rcode
    assert len(msg.question) == qd
    assert resolver.stats.requests[("udp", "invalid")] == 1


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00" * 11, dns.message.make_response(dns.message.make_query(ECI, "A")).to_wire()],
    ids=["empty", "runt", "response"],
)
def test_dropped(data):
    from pldns.dns.rcode import Drop

    with pytest.raises(Drop):
        make_resolver().resolve(data, "udp")


# --- stats ------------------------------------------------------------------------------


def test_requests_counted_by_proto_and_qtype():
    resolver = make_resolver()
    for name, rdtype, proto in [
        (ECI, "A", "udp"),
        (ECI, "A", "udp"),
        (ECI, "AAAA", "tcp"),
        ("example.com.", "A", "udp"),
        (ECI, 99, "udp"),
    ]:
        resolver.resolve(query(name, rdtype), proto)
    assert resolver.stats.requests == {
        ("udp", "A"): 3,
        ("tcp", "AAAA"): 1,
        ("udp", "other"): 1,
    }

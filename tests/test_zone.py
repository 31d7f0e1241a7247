"""Owned names as tiny authoritative zones (sans-IO): SOA and NS at the name, every class,
every type, ANY, and the opt-in PTR answers for the served addresses."""

from __future__ import annotations

import ipaddress

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import pytest

from pldns.dns.answer import SOURCE_LOCAL, SOURCE_OWNED, Local, Resolver
from pldns.dns.stats import Stats
from pldns.dns.table import Addresses, build_table
from pldns.dns.wire import Query

ECI = "eci-vpc.cn-hangzhou.aliyuncs.com."
ECI_PUBLIC = "eci.cn-hangzhou.aliyuncs.com."
V6ONLY = "ecs-vpc.cn-hangzhou.aliyuncs.com."
UNKNOWN = "acc-vpc.cn-hangzhou.aliyuncs.com."
TTL = 45
SERIAL = 1717
ECI_IPS = ("10.0.0.1", "10.0.0.2")
V6_IPS = ("fd00::5",)
DOMAINS = {
    "eci": [ECI.rstrip("."), ECI_PUBLIC.rstrip(".")],
    "ecs": [V6ONLY.rstrip(".")],
    "acc": [UNKNOWN.rstrip(".")],
}
ADDRESSES = {"eci": Addresses(v4=ECI_IPS), "ecs": Addresses(v6=V6_IPS)}


def resolver(ptr: bool = False, when_unknown: str = "forward") -> Resolver:
    table = build_table(DOMAINS, ADDRESSES, TTL, serial=SERIAL, ptr=ptr)
    return Resolver(table, when_unknown, Stats())


def ask(
    name: str, rdtype: str | int, rdclass: str | int = "IN", ptr: bool = False, **kw: object
) -> tuple[dns.message.Message | None, Local | Query]:
    kw.setdefault("use_edns", False)
    data = dns.message.make_query(name, rdtype, rdclass, **kw).to_wire()  # type: ignore[arg-type]
    out = resolver(ptr).resolve(data, "udp")
    if isinstance(out, Local):
        return dns.message.from_wire(out.reply), out
    return None, out


def the_soa(rrset) -> None:  # type: ignore[no-untyped-def]
    """The SOA every answer about the name carries: owned by it, our serial and TTL."""
    assert rrset.rdtype == dns.rdatatype.SOA and rrset.rdclass == dns.rdataclass.IN
    assert rrset.ttl == TTL and len(rrset) == 1
    soa = rrset[0]
    assert (soa.serial, soa.minimum) == (SERIAL, TTL)
    assert soa.mname == rrset.name
    assert str(soa.rname) == "hostmaster." + str(rrset.name)


# --- SOA and NS at the owned name -------------------------------------------------------


@pytest.mark.parametrize("name", [ECI, ECI_PUBLIC, "EcI-vPc.cn-HANGZHOU.aliyuncs.com.", V6ONLY])
def test_soa_query_answers_the_negative_answers_soa(name):
    msg, local = ask(name, "SOA")
    assert local.source == SOURCE_OWNED
    assert msg.rcode() == dns.rcode.NOERROR and msg.flags & dns.flags.AA
    assert len(msg.answer) == 1 and msg.authority == []
    the_soa(msg.answer[0])
    assert str(msg.answer[0].name) == name  # the client's spelling
    # The same record a NODATA carries in its authority section.
    nodata, _ = ask(name, "TXT")
    assert nodata.answer == [] and nodata.authority == msg.answer


def test_ns_query_is_nodata_with_the_soa():
    msg, local = ask(ECI, "NS")
    assert local.source == SOURCE_OWNED
    assert msg.rcode() == dns.rcode.NOERROR and msg.flags & dns.flags.AA
    assert msg.answer == []
    (soa,) = msg.authority
    the_soa(soa)


# Every type a zone tester asks about (genreport's TYPE list and then some), except the ones
# with answers of their own; each must be a coherent NODATA with the SOA.
_ANSWERED = {
    dns.rdatatype.A,
    dns.rdatatype.SOA,
    dns.rdatatype.ANY,
    dns.rdatatype.AXFR,
    dns.rdatatype.IXFR,
}
_ALL_TYPES = [
    t
    for t in [*range(1, 70), *range(99, 110), *range(249, 262), 666, 1000, 32768, 32769, 65280]
    if t not in _ANSWERED
]


@pytest.mark.parametrize("rdtype", _ALL_TYPES, ids=dns.rdatatype.to_text)
def test_every_other_type_is_a_coherent_nodata(rdtype):
    msg, local = ask(ECI, rdtype)
    assert local.source == SOURCE_OWNED
    assert msg.rcode() == dns.rcode.NOERROR and msg.flags & dns.flags.AA
    assert msg.answer == []
    (soa,) = msg.authority
    the_soa(soa)


@pytest.mark.parametrize(
    ("name", "expected_type", "expected"),
    [
        (ECI, dns.rdatatype.A, set(ECI_IPS)),
        (V6ONLY, dns.rdatatype.AAAA, set(V6_IPS)),
    ],
    ids=["v4", "v6-only"],
)
def test_any_gives_the_addresses(name, expected_type, expected):
    msg, _ = ask(name, "ANY")
    (rrset,) = msg.answer
    assert rrset.rdtype == expected_type
    assert {rd.address for rd in rrset} == expected


# --- classes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rdtype", "answer_type"),
    [("A", dns.rdatatype.A), ("SOA", dns.rdatatype.SOA), ("ANY", dns.rdatatype.A)],
)
def test_qclass_any_gets_the_in_data_without_aa(rdtype, answer_type):
    msg, local = ask(ECI, rdtype, "ANY")
    assert local.source == SOURCE_OWNED
    assert msg.rcode() == dns.rcode.NOERROR
    assert not msg.flags & dns.flags.AA  # RFC 6895 §3.2
    assert msg.question[0].rdclass == dns.rdataclass.ANY  # the question echoed as asked
    (rrset,) = msg.answer
    assert rrset.rdtype == answer_type and rrset.rdclass == dns.rdataclass.IN


def test_qclass_any_nodata_carries_the_soa():
    msg, _ = ask(ECI, "MX", "ANY")
    assert msg.rcode() == dns.rcode.NOERROR and msg.answer == []
    (soa,) = msg.authority
    the_soa(soa)


@pytest.mark.parametrize("rdclass", ["CH", "HS", "NONE", 2, 77, 65280])
@pytest.mark.parametrize("name", [ECI, UNKNOWN], ids=["known", "no-address"])
@pytest.mark.parametrize("rdtype", ["A", "TXT", "SOA", "ANY"])
def test_other_classes_at_an_owned_name_are_refused(rdclass, name, rdtype):
    """Never forwarded for a public answer, whatever the when_unknown policy."""
    msg, local = ask(name, rdtype, rdclass)
    assert msg is not None, "an owned name in another class must not be forwarded"
    assert local.source == SOURCE_LOCAL
    assert msg.rcode() == dns.rcode.REFUSED
    assert msg.answer == msg.authority == []
    assert str(msg.question[0].name) == name


def test_other_classes_elsewhere_are_forwarded():
    msg, out = ask("version.bind.", "TXT", "CH")
    assert msg is None and isinstance(out, Query)


def test_qclass_any_at_an_unknown_service_follows_when_unknown():
    msg, out = ask(UNKNOWN, "A", "ANY")
    assert msg is None and isinstance(out, Query)


# --- PTR (answers.ptr) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "target"),
    [("10.0.0.1", ECI), ("10.0.0.2", ECI), ("fd00::5", V6ONLY)],
)
def test_ptr_answers_the_first_owned_name(ip, target):
    reverse = dns.reversename.from_address(ip).to_text()
    msg, local = ask(reverse, "PTR", ptr=True)
    assert local.source == SOURCE_OWNED
    assert msg.rcode() == dns.rcode.NOERROR and msg.flags & dns.flags.AA
    (rrset,) = msg.answer
    assert rrset.rdtype == dns.rdatatype.PTR and rrset.ttl == TTL
    assert str(rrset.name) == reverse
    assert [str(rd.target) for rd in rrset] == [target]
    # ANY gives the PTR; SOA the name's own SOA; other types NODATA with it.
    any_msg, _ = ask(reverse, "ANY", ptr=True)
    assert any_msg.answer == msg.answer
    soa_msg, _ = ask(reverse, "SOA", ptr=True)
    the_soa(soa_msg.answer[0])
    assert str(soa_msg.answer[0].name) == reverse
    for rdtype in ("A", "AAAA", "TXT", "NS"):
        nodata, _ = ask(reverse, rdtype, ptr=True)
        assert nodata.rcode() == dns.rcode.NOERROR and nodata.answer == []
        the_soa(nodata.authority[0])


def test_ptr_is_off_by_default_and_other_reverse_names_are_forwarded():
    reverse = dns.reversename.from_address("10.0.0.1").to_text()
    msg, out = ask(reverse, "PTR")
    assert msg is None and isinstance(out, Query)
    other = dns.reversename.from_address("10.0.0.9").to_text()
    msg, out = ask(other, "PTR", ptr=True)
    assert msg is None and isinstance(out, Query)
    # The parent of a reverse name is not ours either.
    msg, out = ask("0.0.10.in-addr.arpa.", "PTR", ptr=True)
    assert msg is None and isinstance(out, Query)


def test_ptr_table_owns_exactly_the_served_addresses():
    table = build_table(DOMAINS, ADDRESSES, TTL, serial=SERIAL, ptr=True)
    plain = build_table(DOMAINS, ADDRESSES, TTL, serial=SERIAL)
    extra = {owned.name for key, owned in table.names.items() if key not in plain.names}
    served = [*ECI_IPS, *V6_IPS]
    assert extra == {ipaddress.ip_address(ip).reverse_pointer + "." for ip in served}
    # An address two services share points at the first one's name.
    shared = build_table(
        {"a": ["a.example.com"], "b": ["b.example.com"]},
        {"a": Addresses(v4=("10.9.9.9",)), "b": Addresses(v4=("10.9.9.9",))},
        TTL,
        ptr=True,
    )
    reverse = dns.reversename.from_address("10.9.9.9").to_wire()
    assert shared.names[reverse].service == "a"


# --- through a running pldns, and the config key --------------------------------------


def test_ptr_through_a_running_pldns(pldns) -> None:
    from tests.fakes import clients
    from tests.fakes.proc import OWNED, OWNED_IPS

    server = pldns(answers={"ptr": True})
    for ip in OWNED_IPS:
        reverse = dns.reversename.from_address(ip)
        for send in (clients.udp, clients.tcp):
            reply = send(server.addr, clients.make_query(reverse, "PTR"))
            assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AA
            assert [str(rd.target) for rd in reply.answer[0]] == [OWNED + "."]
    if clients.have("dig"):
        got = clients.dig(server.addr, "-x", OWNED_IPS[0])
        assert got.status == "NOERROR" and got.rdata("PTR") == [OWNED + "."], got.text


def test_answers_ptr_config() -> None:
    from pldns.config import parse_config
    from pldns.config.schema import ConfigError

    base = {"region": "cn-hangzhou", "services": {"eci": {"domains": ["eci.{region}.x.com"]}}}
    assert parse_config(base).answers.ptr is False
    assert parse_config({**base, "answers": {"ptr": True}}).answers.ptr is True
    with pytest.raises(ConfigError, match=r"answers\.ptr: expected true or false, got"):
        parse_config({**base, "answers": {"ptr": "yes"}})

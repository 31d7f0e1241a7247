"""build_table: prebuilt wire sections, parsed back with dnspython."""

from __future__ import annotations

import struct

import dns.message
import dns.name
import dns.rdatatype
import pytest

from pldns.dns.table import Addresses, RecordTable, build_table, soa_record

NAME = "eci-vpc.cn-hangzhou.aliyuncs.com"


def parse_section(rtype: int, section: bytes, count: int, ns: int = 0) -> dns.message.Message:
    """Wrap a prebuilt section (names point at offset 12) in a reply dnspython can parse."""
    question = dns.name.from_text(NAME).to_wire() + struct.pack("!HH", rtype, 1)
    head = struct.pack("!6H", 1, 0x8400, 1, count, ns, 0)
    return dns.message.from_wire(head + question + section)


def rotation_addresses(rtype: int, section: bytes, count: int) -> list[str]:
    msg = parse_section(rtype, section, count)
    return [rd.address for rrset in msg.answer for rd in rrset]


def one(addrs: Addresses, name: str = NAME, ttl: int = 30) -> RecordTable:
    return build_table({"eci": [name]}, {"eci": addrs}, ttl, serial=7)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (["10.0.0.1"], ["10.0.0.1"]),
        (["10.0.0.2", "10.0.0.10", "10.0.0.2", "10.0.0.1"], ["10.0.0.1", "10.0.0.2", "10.0.0.10"]),
        (["192.168.0.1", "10.0.0.1", "192.168.0.1"], ["10.0.0.1", "192.168.0.1"]),
    ],
    ids=["single", "duplicates-numeric-sort", "duplicates"],
)
def test_a_rotations(given, expected):
    owned = one(Addresses(v4=tuple(given))).names[dns.name.from_text(NAME).to_wire()]
    assert owned.a_count == len(expected)
    assert len(owned.a) == len(expected)
    for shift, section in enumerate(owned.a):
        assert rotation_addresses(1, section, owned.a_count) == expected[shift:] + expected[:shift]
    assert (owned.aaaa, owned.aaaa_count) == ((b"",), 0)


def test_aaaa_rotations_and_ttl():
    owned = next(
        iter(one(Addresses(v6=("fd00::2", "FD00:0:0::1", "fd00::2")), ttl=45).names.values())
    )
    assert owned.aaaa_count == 2
    assert [rotation_addresses(28, s, 2) for s in owned.aaaa] == [
        ["fd00::1", "fd00::2"],
        ["fd00::2", "fd00::1"],
    ]
    msg = parse_section(28, owned.aaaa[0], 2)
    assert msg.answer[0].ttl == 45 and msg.answer[0].rdtype == dns.rdatatype.AAAA
    assert (owned.a, owned.a_count) == ((b"",), 0)


def test_names_are_lower_cased_keys():
    table = build_table(
        {"eci": ["ECI-VPC.Cn-HangZhou.aliyuncs.com", "eci.cn-hangzhou.aliyuncs.com."]},
        {"eci": Addresses(v4=("10.0.0.1",))},
        30,
        serial=1,
    )
    keys = {dns.name.from_wire(k, 0)[0].to_text() for k in table.names}
    assert keys == {"eci-vpc.cn-hangzhou.aliyuncs.com.", "eci.cn-hangzhou.aliyuncs.com."}
    assert {o.name for o in table.names.values()} == keys
    assert {o.service for o in table.names.values()} == {"eci"}
    assert table.domains == {
        "eci": ("ECI-VPC.Cn-HangZhou.aliyuncs.com", "eci.cn-hangzhou.aliyuncs.com.")
    }
    assert table.get(dns.name.from_text("ECI.cn-hangzhou.aliyuncs.com").to_wire()) is None


@pytest.mark.parametrize(
    ("addrs", "known"),
    [
        (Addresses(), False),
        (Addresses(v4=("10.0.0.1",)), True),
        (Addresses(v6=("fd00::1",)), True),
    ],
    ids=["none", "v4", "v6"],
)
def test_known(addrs, known):
    (owned,) = one(addrs).names.values()
    assert owned.known is known
    assert addrs.known is known


def test_service_without_addresses_still_owns_its_names():
    table = build_table({"eci": [NAME], "vpc": ["vpc.cn-hangzhou.aliyuncs.com"]}, {}, 30, 1)
    assert len(table.names) == 2
    assert not any(o.known for o in table.names.values())
    assert table.services == {}


def test_soa_record():
    msg = parse_section(6, soa_record(60, 123456), 0, ns=1)
    (soa,) = msg.authority
    assert soa.ttl == 60 and str(soa.name) == NAME + "."
    rd = soa[0]
    assert (rd.serial, rd.minimum) == (123456, 60)
    assert str(rd.mname) == NAME + "."
    assert str(rd.rname) == "hostmaster." + NAME + "."


def test_table_metadata():
    table = build_table({"eci": [NAME]}, {"eci": Addresses(v4=("10.0.0.1",))}, 15, serial=99)
    assert (table.serial, table.ttl, table.loaded) == (99, 15, True)
    (owned,) = table.names.values()
    assert parse_section(6, owned.soa, 0, ns=1).authority[0][0].serial == 99
    assert not build_table({}, {}, 30, serial=1, loaded=False).loaded


def test_bad_address_raises():
    with pytest.raises(ValueError):
        one(Addresses(v4=("10.0.0.300",)))

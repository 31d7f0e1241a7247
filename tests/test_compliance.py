"""A DNS compliance tester's view of an owned name, probed as a zone against a running pldns.

The probes are those of ISC's DNS compliance tester (genreport, "EDNS" and "FULL" groups:
plain and flagged SOA queries, unknown opcodes, unknown types, TCP, EDNS versions, flags and
options, DO, a 512-byte buffer), sent as raw packets over UDP and TCP; the checks are the
ones it applies to an authoritative server's reply, written here from the RFCs it cites.
One deliberate difference, documented in the README: a NOTIMP for an unknown opcode copies RD
(RFC 1035 §4.1.1 "copied into the response"), as genreport's recursive mode expects.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import dns.message
import dns.name
import pytest

from tests.fakes import clients
from tests.fakes.proc import OWNED

SOA, DNSKEY, TYPE666 = 6, 48, 666
NOERROR, NOTIMP, BADVERS = 0, 4, 16
COOKIE = b"\x00\x0a\x00\x08\x01\x02\x03\x04\x05\x06\x07\x08"
OPT100 = b"\x00\x64\x00\x00"
NSID = b"\x00\x03\x00\x00"
ECS = b"\x00\x08\x00\x04\x00\x01\x00\x00"
EXPIRE = b"\x00\x09\x00\x00"

# Header flag bits in the 16-bit flags word.
QR, AA, TC, RD, RA, Z, AD, CD = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080, 0x0040, 0x0020, 0x0010


@dataclass(frozen=True)
class Probe:
    name: str
    qtype: int = SOA
    udpsize: int = 0  # 0: no EDNS
    ednsflags: int = 0
    version: int = 0
    options: bytes = b""
    flags: int = 0
    opcode: int = 0
    tcp: bool = False
    ignore_tc: bool = False


PROBES = [
    Probe("dns"),
    Probe("aa", flags=AA),
    Probe("ad", flags=AD),
    Probe("cd", flags=CD),
    Probe("ra", flags=RA),
    Probe("rd", flags=RD),
    Probe("tc", flags=TC),
    Probe("zflag", flags=Z),
    Probe("opcode", qtype=0, opcode=15),
    Probe("opcodeflg", qtype=0, opcode=15, flags=TC | RD | RA | CD | AD | AA | Z),
    Probe("type666", qtype=TYPE666),
    Probe("tcp", tcp=True),
    Probe("edns", udpsize=4096),
    Probe("edns1", udpsize=4096, version=1),
    Probe("edns@512", qtype=DNSKEY, udpsize=512, ednsflags=0x8000, ignore_tc=True),
    Probe("ednsopt", udpsize=4096, options=OPT100),
    Probe("edns1opt", udpsize=4096, version=1, options=OPT100),
    Probe("do", udpsize=4096, ednsflags=0x8000),
    Probe("docd", udpsize=4096, ednsflags=0x8000, flags=CD),
    Probe("edns1do", udpsize=4096, ednsflags=0x8000, version=1),
    Probe("ednsflags", udpsize=4096, ednsflags=0x0080),
    Probe("optlist", udpsize=4096, options=NSID + ECS + EXPIRE + COOKIE),
    Probe("ednsnsid", udpsize=4096, options=NSID),
    Probe("ednscookie", udpsize=4096, options=COOKIE),
    Probe("ednsexpire", udpsize=4096, options=EXPIRE),
    Probe("ednssubnet", udpsize=4096, options=ECS),
    Probe("edns1nsid", udpsize=4096, version=1, options=NSID),
    Probe("edns1cookie", udpsize=4096, version=1, options=COOKIE),
    Probe("edns1expire", udpsize=4096, version=1, options=EXPIRE),
    Probe("edns1subnet", udpsize=4096, version=1, options=ECS),
    Probe("ednstcp", qtype=DNSKEY, udpsize=512, ednsflags=0x8000, tcp=True),
    Probe("bind11", udpsize=4096, ednsflags=0x8000, options=COOKIE),
    Probe("dig11", udpsize=4096, options=COOKIE, flags=RD | AD),
]


def build(probe: Probe, zone: str) -> bytes:
    flags = (probe.opcode << 11) | probe.flags
    if probe.opcode:  # header only
        return struct.pack("!6H", 0x4242, flags, 0, 0, 0, 0)
    ar = 1 if probe.udpsize else 0
    wire = struct.pack("!6H", 0x4242, flags, 1, 0, 0, ar)
    wire += dns.name.from_text(zone).to_wire() + struct.pack("!HH", probe.qtype, 1)
    if probe.udpsize:
        ttl = (probe.version << 16) | probe.ednsflags
        wire += b"\x00" + struct.pack("!HHIH", 41, probe.udpsize, ttl, len(probe.options))
        wire += probe.options
    return wire


def exchange(addr: tuple[str, int], probe: Probe, wire: bytes) -> bytes:
    if probe.tcp:
        with clients.tcp_connect(addr) as sock:
            sock.sendall(clients.frame(wire))
            reply = clients.recv_frame(sock)
    else:
        reply = clients.raw_udp(addr, wire, timeout=2.0)
    assert reply is not None, f"{probe.name}: no reply"
    return reply


@dataclass
class Seen:
    flags: int
    opcode: int
    rcode: int
    counts: tuple[int, int, int, int]
    soa_in_answer: bool
    opt: tuple[int, tuple[int, ...]] | None  # (the OPT's TTL field, its option codes)
    size: int


def parse(reply: bytes, zone: str) -> Seen:
    """The header as raw bits (nothing normalised away); the sections through dnspython."""
    msg = dns.message.from_wire(reply)  # it must parse at all
    flags = struct.unpack_from("!H", reply, 2)[0]
    counts = struct.unpack_from("!4H", reply, 4)
    opt = None
    if msg.opt is not None:
        ttl = ((msg.rcode() >> 4) << 24) | (msg.edns << 16) | msg.ednsflags
        opt = (ttl, tuple(int(o.otype) for o in msg.options))
    soa = any(r.rdtype == SOA and r.name == dns.name.from_text(zone) for r in msg.answer)
    return Seen(flags, (flags >> 11) & 0xF, msg.rcode(), counts, soa, opt, len(reply))


def problems(probe: Probe, seen: Seen) -> list[str]:
    """genreport's verdict tags for an authoritative server's reply (empty = "ok")."""
    out = []
    if seen.opcode != probe.opcode:
        out.append(f"opcode {seen.opcode}")
    if probe.version == 0:
        if probe.opcode == 0 and seen.rcode != NOERROR:
            out.append(f"rcode {seen.rcode}")
        if probe.opcode != 0 and seen.rcode != NOTIMP:
            out.append(f"rcode {seen.rcode}")
    elif seen.rcode != BADVERS:
        out.append(f"rcode {seen.rcode} (BADVERS expected)")
    if seen.opt is not None:
        ttl, codes = seen.opt
        if (ttl >> 16) & 0xFF:
            out.append("version-not-zero")
        if ttl & 0x7FFF:
            out.append("mbz")  # only DO is defined among the EDNS flags
        if 100 in codes:
            out.append("echoed")  # an unknown option must not come back (RFC 6891 §6.1.2)
    if seen.opt is None and probe.udpsize:
        out.append("noopt")
    if seen.opt is not None and not probe.udpsize:
        out.append("opt")
    sound = probe.version == 0 and seen.rcode == NOERROR
    if probe.qtype == SOA and sound and not seen.soa_in_answer:
        out.append("nosoa")
    if probe.qtype == SOA and seen.soa_in_answer and (probe.version or seen.rcode != NOERROR):
        out.append("soa")
    if probe.opcode == 0 and sound and not seen.flags & AA:
        out.append("noaa")
    if seen.flags & AA and probe.opcode:
        out.append("aa")
    if seen.flags & RA and probe.opcode:
        out.append("ra")  # RA is only defined for QUERY
    if seen.flags & RD and not probe.flags & RD:
        out.append("rd")
    if not seen.flags & RD and probe.flags & RD:
        out.append("nord")  # RFC 1035 §4.1.1: RD is copied
    if seen.flags & AD and (probe.opcode or (not probe.flags & AD and not probe.ednsflags)):
        out.append("ad")
    if seen.flags & CD and (probe.opcode or not probe.flags & CD):
        out.append("cd")
    if seen.flags & Z:
        out.append("z")
    if seen.flags & TC and not probe.ignore_tc:
        out.append("tc")
    if probe.opcode and seen.counts[2]:
        out.append("non-empty-authority-section")
    if probe.ignore_tc and seen.size > (probe.udpsize or 512):
        out.append("toobig")
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory):  # type: ignore[no-untyped-def]
    """One pldns for every probe (a subprocess, stopped at the end)."""
    from tests.fakes.proc import PldnsProcess, base_config, free_port

    config = base_config("127.0.0.1", free_port(), ["127.0.0.1:9"])
    proc = PldnsProcess(config, tmp_path_factory.mktemp("compliance"), name="pldns")
    proc.start()
    yield proc
    proc.check_clean_exit()


@pytest.mark.parametrize("probe", PROBES, ids=lambda p: p.name)
@pytest.mark.parametrize("zone", [OWNED, OWNED.upper()], ids=["lower", "upper"])
def test_an_owned_name_passes_every_compliance_probe(server, probe, zone):
    reply = exchange(server.addr, probe, build(probe, zone))
    assert reply[:2] == b"\x42\x42"
    seen = parse(reply, zone)
    assert problems(probe, seen) == [], f"{probe.name}: {seen}"


def test_the_checks_can_fail():
    """The verdicts are not vacuous: a reply with the sins the tester looks for is flagged."""
    probe = Probe("edns", udpsize=4096)
    bad = Seen(QR | Z | CD | RD, 0, NOERROR, (1, 0, 0, 1), False, ((1 << 16) | 0x40, (100,)), 99)
    assert set(problems(probe, bad)) == {
        *("version-not-zero", "mbz", "echoed", "nosoa", "noaa", "rd", "cd", "z"),
    }
    opcode = Probe("opcodeflg", qtype=0, opcode=15, flags=RD)
    bad = Seen(QR | RA | AA, 15, NOERROR, (0, 0, 1, 0), False, None, 12)
    assert set(problems(opcode, bad)) == {
        "rcode 0",
        "aa",
        "ra",
        "nord",
        "non-empty-authority-section",
    }


def test_soa_is_the_same_over_udp_and_tcp(server):
    udp = clients.udp(server.addr, clients.make_query(OWNED, "SOA"))
    tcp = clients.tcp(server.addr, clients.make_query(OWNED, "SOA"))
    assert udp.answer == tcp.answer and len(udp.answer) == 1

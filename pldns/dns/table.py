"""The owned-name table: immutable, built anew from addresses and swapped in whole.

Each owned name maps to prebuilt wire sections. Answer records use the compression pointer
0xC00C (the question name at offset 12), so one template serves every spelling of the name.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pldns.dns.wire import TYPE_A, TYPE_AAAA, TYPE_PTR, TYPE_SOA, encode_name

_PTR_QNAME = b"\xc0\x0c"
_IN = b"\x00\x01"
# Random rotation is not needed: every reply starts at the next address in turn (round
# robin), so clients that take the first address spread over the zones.


@dataclass(frozen=True, slots=True)
class Addresses:
    """The addresses one service answers with, and where they came from."""

    v4: tuple[str, ...] = ()
    v6: tuple[str, ...] = ()
    origin: str = "static"  # static | privatelink | snapshot | file
    detail: tuple[Mapping[str, str], ...] = ()  # per-IP facts for status (zone, ENI, ...)

    @property
    def known(self) -> bool:
        return bool(self.v4 or self.v6)


@dataclass(frozen=True, slots=True)
class OwnedName:
    """One owned name with its answers prebuilt as wire bytes."""

    name: str
    service: str
    known: bool
    a: tuple[bytes, ...]  # rotations of the A answer section
    a_count: int
    aaaa: tuple[bytes, ...]
    aaaa_count: int
    soa: bytes  # the SOA: the answer to SOA queries, the authority of NODATA (RFC 2308 §3)
    ptr: bytes = b""  # a reverse name of a served address (answers.ptr): its PTR record


@dataclass(frozen=True, slots=True)
class RecordTable:
    """Lower-cased wire name -> OwnedName. Never mutated; a new one replaces it."""

    names: Mapping[bytes, OwnedName] = field(default_factory=dict)
    services: Mapping[str, Addresses] = field(default_factory=dict)
    domains: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    serial: int = 0
    ttl: int = 30
    loaded: bool = False  # True once the table holds addresses from a real source
    # Whole replies (all but the ID) for the commonest exact queries, keyed by the query's
    # bytes after the ID: see `fast_replies`.
    fast: Mapping[bytes, tuple[tuple[bytes, ...], str]] = field(default_factory=dict)

    def get(self, qname: bytes) -> OwnedName | None:
        return self.names.get(qname)


def _rr(rtype: int, ttl: int, rdata: bytes, owner: bytes = _PTR_QNAME) -> bytes:
    return (
        owner
        + rtype.to_bytes(2, "big")
        + _IN
        + ttl.to_bytes(4, "big")
        + len(rdata).to_bytes(2, "big")
        + rdata
    )


def _rotations(rtype: int, ttl: int, packed: list[bytes]) -> tuple[bytes, ...]:
    records = [_rr(rtype, ttl, ip) for ip in packed]
    if not records:
        return (b"",)
    return tuple(b"".join(records[i:] + records[:i]) for i in range(len(records)))


def soa_record(ttl: int, serial: int, owner: bytes = _PTR_QNAME) -> bytes:
    """SOA owned by the queried name itself: each owned name is its own tiny zone apex.

    MNAME is the name, RNAME hostmaster.<name>; MINIMUM and the TTL are the answer TTL, so
    the negative answer is cached no longer than a positive one (RFC 2308 §5). `owner` is a
    compression pointer to the owned name (the question name unless told otherwise).
    """
    rdata = (
        owner
        + b"\x0ahostmaster"
        + owner
        + (serial & 0xFFFFFFFF).to_bytes(4, "big")
        + (3600).to_bytes(4, "big")  # refresh
        + (600).to_bytes(4, "big")  # retry
        + (86400).to_bytes(4, "big")  # expire
        + ttl.to_bytes(4, "big")  # minimum: the negative-caching TTL
    )
    return _rr(TYPE_SOA, ttl, rdata, owner)


def build_table(
    domains: Mapping[str, Iterable[str]],
    addresses: Mapping[str, Addresses],
    ttl: int,
    serial: int | None = None,
    loaded: bool = True,
    ptr: bool = False,
) -> RecordTable:
    """Build a table from service -> domains and service -> addresses.

    A service without addresses still owns its names (known=False), so the configured
    `when_unknown` policy applies to them instead of silently forwarding. With `ptr`, the
    reverse name of every served address (in-addr.arpa, ip6.arpa) is owned as well and
    answers PTR with the first domain of its service.
    """
    serial = int(time.time()) if serial is None else serial
    soa = soa_record(ttl, serial)
    names: dict[bytes, OwnedName] = {}
    frozen_domains: dict[str, tuple[str, ...]] = {}
    for service, service_domains in domains.items():
        addrs = addresses.get(service, Addresses())
        v4 = sorted({ipaddress.IPv4Address(ip) for ip in addrs.v4})
        v6 = sorted({ipaddress.IPv6Address(ip) for ip in addrs.v6})
        a = _rotations(TYPE_A, ttl, [ip.packed for ip in v4])
        aaaa = _rotations(TYPE_AAAA, ttl, [ip.packed for ip in v6])
        frozen_domains[service] = tuple(service_domains)
        for domain in service_domains:
            key = encode_name(domain.lower())
            names[key] = OwnedName(
                name=domain.rstrip(".").lower() + ".",
                service=service,
                known=addrs.known,
                a=a,
                a_count=len(v4),
                aaaa=aaaa,
                aaaa_count=len(v6),
                soa=soa,
            )
    if ptr:
        _add_reverse_names(names, domains, addresses, ttl, soa)
    return RecordTable(
        names=names,
        fast=fast_replies(names),
        services=dict(addresses),
        domains=frozen_domains,
        serial=serial,
        ttl=ttl,
        loaded=loaded,
    )


def _add_reverse_names(
    names: dict[bytes, OwnedName],
    domains: Mapping[str, Iterable[str]],
    addresses: Mapping[str, Addresses],
    ttl: int,
    soa: bytes,
) -> None:
    """Own the reverse name of each served address, as dnsmasq and blocky do for local records.

    An address served by two services points at the first service's name (config order).
    A reverse name is its own tiny zone like every owned name: PTR answers, other types
    NODATA with its SOA. A configured owned name is never replaced.
    """
    for service, service_domains in domains.items():
        first = next(iter(service_domains), None)
        addrs = addresses.get(service)
        if first is None or addrs is None:
            continue
        record = _rr(TYPE_PTR, ttl, encode_name(first.lower()))
        for ip in (*addrs.v4, *addrs.v6):
            reverse = ipaddress.ip_address(ip).reverse_pointer
            key = encode_name(reverse)
            if key in names:
                continue
            names[key] = OwnedName(
                name=reverse + ".",
                service=service,
                known=True,
                a=(b"",),
                a_count=0,
                aaaa=(b"",),
                aaaa_count=0,
                soa=soa,
                ptr=record,
            )


# Flag bytes of a plain query: QR=0, opcode QUERY, RD either way (byte 2); AD and CD either
# way, no Z (byte 3). Each gets its reply flags: QR AA + RD copied; RA + CD copied.
_FAST_FLAGS = [(b2, b3) for b2 in (0x00, 0x01) for b3 in (0x00, 0x10, 0x20, 0x30)]
_FAST_LIMIT = 512  # larger answers take the full path, which truncates for UDP


def fast_replies(names: Mapping[bytes, OwnedName]) -> dict[bytes, tuple[tuple[bytes, ...], str]]:
    """Prebuilt replies for A/AAAA queries without EDNS, spelled in lower case.

    A query whose bytes after the ID are exactly a key here gets `ID + rotation` as its reply,
    with no parsing at all. Anything else (mixed case, EDNS, other types, other flags) takes
    the full path, which gives the same answer.
    """
    fast: dict[bytes, tuple[tuple[bytes, ...], str]] = {}
    counts_q = b"\x00\x01\x00\x00\x00\x00\x00\x00"
    for wire_name, owned in names.items():
        if not owned.known:
            continue
        for qtype, label, rotations, count in (
            (TYPE_A, "A", owned.a, owned.a_count),
            (TYPE_AAAA, "AAAA", owned.aaaa, owned.aaaa_count),
        ):
            question = wire_name + qtype.to_bytes(2, "big") + _IN
            if count:
                counts_r, sections = (1, count, 0, 0), rotations
            else:  # NODATA with the SOA
                counts_r, sections = (1, 0, 1, 0), (owned.soa,)
            for b2, b3 in _FAST_FLAGS:
                flags = bytes((0x84 | (b2 & 0x01), 0x80 | (b3 & 0x10)))
                head = flags + b"".join(c.to_bytes(2, "big") for c in counts_r) + question
                replies = tuple(head + section for section in sections)
                if len(replies[0]) + 2 > _FAST_LIMIT:
                    continue
                fast[bytes((b2, b3)) + counts_q + question] = (replies, label)
    return fast

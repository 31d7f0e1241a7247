"""Property-based tests for the owned-name table and the answer builder, dnspython as oracle.

Hypothesis generates a table (services, their domains, IPv4 and IPv6 addresses or none, TTL,
serial) and a query (an owned name in any case, a name below or beside it, any type, class
IN or not, with or without EDNS, over UDP or TCP). Every reply must parse with dnspython and
say exactly what the table and the README's rules say; the prebuilt fast path must give the
same answer as the full path.
"""

from __future__ import annotations

import ipaddress

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
from hypothesis import event, given
from hypothesis import strategies as st

from pldns.dns.answer import SOURCE_LOCAL, SOURCE_OWNED, Local, Resolver
from pldns.dns.stats import Stats
from pldns.dns.table import Addresses, build_table
from pldns.dns.wire import OUR_PAYLOAD, Query, encode_name

LDH = "abcdefghijklmnopqrstuvwxyz0123456789-"
domain = st.lists(st.text(LDH, min_size=1, max_size=20), min_size=1, max_size=4).map(".".join)
v4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
v6 = st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))


@st.composite
def tables(draw: st.DrawFn):
    """service -> domains (distinct across services) and service -> Addresses."""
    all_domains = draw(st.lists(domain, min_size=1, max_size=8, unique=True))
    count = draw(st.integers(1, len(all_domains)))
    domains: dict[str, list[str]] = {f"s{i}": [] for i in range(count)}
    for i, d in enumerate(all_domains):
        domains[f"s{i % count}"].append(d)
    addresses = {}
    for service in domains:
        if draw(st.integers(0, 4)) or service == "s0":  # some services have no address yet
            # Sizes around the 512-byte UDP limit too (an A record is 16 bytes, AAAA 28).
            n4 = draw(st.sampled_from([0, 1, 2, 3, 29, 30, 31, 40, 80]))
            n6 = draw(st.sampled_from([0, 1, 2, 16, 17, 18, 44]))
            addresses[service] = Addresses(
                v4=tuple(draw(st.lists(v4, min_size=n4, max_size=n4))),
                v6=tuple(draw(st.lists(v6, min_size=n6, max_size=n6))),
                origin=draw(st.sampled_from(["static", "privatelink", "file"])),
            )
    ttl = draw(st.integers(0, 86400))
    serial = draw(st.integers(0, 2**32 - 1))
    return domains, addresses, ttl, serial


def random_case(draw: st.DrawFn, name: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    return "".join(c.upper() if f else c for c, f in zip(name, flips, strict=True))


QTYPES = [1, 28, 255, 252, 251, 65, 64, 16, 15, 5, 6, 2, 12, 33, 99]


@st.composite
def asks(draw: st.DrawFn, domains: dict[str, list[str]]):
    owned = [d for ds in domains.values() for d in ds]
    kind = draw(st.sampled_from(["owned", "owned", "owned", "below", "other"]))
    name = draw(st.sampled_from(owned))
    if kind == "below":  # exact names only: a child of an owned name is not owned
        name = draw(st.text(LDH, min_size=1, max_size=10)) + "." + name
    elif kind == "other":
        name = draw(domain)
    name = random_case(draw, name)
    qtype = draw(st.sampled_from([1, 28, 252, 251, *QTYPES]) | st.integers(1, 65535))
    qclass = draw(st.sampled_from([1, 1, 1, 1, 3, 255]))
    use_edns = draw(st.sampled_from([False, 0, 0, 1]))
    msg = dns.message.make_query(
        name,
        qtype,
        rdclass=qclass,
        use_edns=use_edns,
        payload=draw(st.integers(0, 4096)),
        want_dnssec=draw(st.booleans()),
    )
    msg.id = draw(st.integers(0, 65535))
    # RD and CD either way, AD either way (a client may set it: RFC 6840 §5.7)
    msg.flags = draw(st.integers(0, 1)) * dns.flags.RD | draw(
        st.sampled_from([0, 0x10, 0x20, 0x30])
    )
    proto = draw(st.sampled_from(["udp", "tcp"]))
    when_unknown = draw(st.sampled_from(["forward", "servfail"]))
    return msg, proto, when_unknown


def is_rotation(got: list, ordered: list) -> bool:
    return len(got) == len(ordered) and any(
        got == ordered[k:] + ordered[:k] for k in range(max(1, len(ordered)))
    )


@given(tables(), st.data())
def test_every_reply_matches_the_table(table_spec, data):
    domains, addresses, ttl, serial = table_spec
    table = build_table(domains, addresses, ttl, serial=serial)
    msg, proto, when_unknown = data.draw(asks(domains))
    wire = msg.to_wire()
    resolver = Resolver(table, when_unknown, Stats())
    out = resolver.resolve(wire, proto)
    qname = msg.question[0].name
    key = encode_name(qname.to_text().lower())
    service = next((s for s, ds in domains.items() if key in {encode_name(d) for d in ds}), None)
    addrs = addresses.get(service, Addresses()) if service else None
    v4s = sorted({ipaddress.IPv4Address(a) for a in addrs.v4}) if addrs else []
    v6s = sorted({ipaddress.IPv6Address(a) for a in addrs.v6}) if addrs else []
    qtype, qclass = msg.question[0].rdtype, msg.question[0].rdclass
    owned = service is not None and qclass == 1

    if msg.edns > 0:  # RFC 6891 §6.1.3, before anything else is decided
        assert isinstance(out, Local) and out.source == SOURCE_LOCAL
        reply = dns.message.from_wire(out.reply)
        assert reply.rcode() == dns.rcode.BADVERS
        event("badvers")
        return
    known = owned and bool(v4s or v6s)
    if not owned or (not known and when_unknown == "forward"):
        assert isinstance(out, Query), "not ours to answer: forwarded"
        assert out.qname == key and out.qtype == qtype and out.qclass == qclass
        event("forwarded")
        return
    assert isinstance(out, Local)
    reply = dns.message.from_wire(out.reply)
    assert reply.id == msg.id
    assert reply.question[0].name.to_text() == qname.to_text()  # the client's spelling
    assert reply.flags & dns.flags.QR and reply.flags & dns.flags.RA
    assert not reply.flags & dns.flags.AD
    assert reply.flags & (dns.flags.RD | dns.flags.CD) == msg.flags & (dns.flags.RD | dns.flags.CD)
    assert (reply.opt is None) == (msg.opt is None)
    if reply.opt is not None:
        assert reply.payload == OUR_PAYLOAD
        assert bool(reply.ednsflags & dns.flags.DO) == bool(msg.ednsflags & dns.flags.DO)
    if not known:
        assert out.source == SOURCE_LOCAL and reply.rcode() == dns.rcode.SERVFAIL
        event("servfail")
        return
    if qtype in (dns.rdatatype.AXFR, dns.rdatatype.IXFR):
        assert out.source == SOURCE_LOCAL and reply.rcode() == dns.rcode.REFUSED
        event("refused")
        return
    assert out.source == SOURCE_OWNED
    assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AA
    limit = (max(msg.payload, 512) if msg.opt is not None else 512) if proto == "udp" else 65535
    if reply.flags & dns.flags.TC:
        assert proto == "udp"
        assert reply.answer == reply.authority == []
        # Truncated only when the whole answer would not fit the client's limit.
        full = Resolver(table, when_unknown, Stats()).resolve(wire, "tcp")
        assert isinstance(full, Local) and len(full.reply) > limit
        event("truncated")
        return
    assert len(out.reply) <= limit
    if qtype in (dns.rdatatype.A, dns.rdatatype.ANY) and v4s:
        want, rdtype = v4s, dns.rdatatype.A
    elif qtype == dns.rdatatype.AAAA and v6s:
        want, rdtype = v6s, dns.rdatatype.AAAA
    else:  # NODATA: the owned name's own SOA in authority (RFC 2308 §2.2), never NXDOMAIN
        assert reply.answer == []
        (soa,) = reply.authority
        assert soa.rdtype == dns.rdatatype.SOA and soa.name == qname and soa.ttl == ttl
        (rd,) = soa
        assert rd.mname == qname and rd.rname == dns.name.Name([b"hostmaster", *qname.labels])
        assert (rd.serial, rd.minimum) == (serial, ttl)
        event("nodata")
        return
    assert reply.authority == []
    (rrset,) = reply.answer
    assert rrset.rdtype == rdtype and rrset.name == qname and rrset.ttl == ttl
    got = [ipaddress.ip_address(rd.address) for rd in rrset]
    assert is_rotation(got, want)
    event(f"answer {dns.rdatatype.to_text(rdtype)}")


@given(tables(), st.data())
def test_fast_path_gives_the_full_paths_answer(table_spec, data):
    domains, addresses, ttl, serial = table_spec
    table = build_table(domains, addresses, ttl, serial=serial)
    msg, _, when_unknown = data.draw(asks(domains))
    # The fast path serves plain lower-case queries; draw those too, not only random case.
    if data.draw(st.booleans()):
        msg.question[0].name = dns.name.from_text(msg.question[0].name.to_text().lower())
        msg.use_edns(False)
    wire = msg.to_wire()
    fast = Resolver(table, when_unknown, Stats()).fast(wire, "udp")
    if fast is None:
        return
    event("fast path hit")
    full = Resolver(table, when_unknown, Stats()).resolve(wire, "udp")
    assert isinstance(full, Local), "the fast path answered a query the full path forwards"
    assert fast == full.reply  # both start at the first rotation
    fast_msg = dns.message.from_wire(fast)
    assert fast_msg.id == msg.id and fast_msg.flags & dns.flags.AA

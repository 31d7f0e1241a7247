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
        if draw(st.sampled_from([True] * 4 + [False])) or service == "s0":  # or none yet
            # Sizes around the 512-byte UDP limit too (an A record is 16 bytes, AAAA 28).
            n4 = draw(st.sampled_from([2, 1, 0, 3, 29, 30, 31, 40, 80]))
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


QTYPES = [1, 28, 255, 6, 1, 28, 12, 252, 251, 65, 16, 2, 5, 15, 0, 0]  # 0: any other type


@st.composite
def asks(draw: st.DrawFn, domains: dict[str, list[str]], addresses=None):
    owned = [d for ds in domains.values() for d in ds]
    ips = [ip for a in (addresses or {}).values() for ip in (*a.v4, *a.v6)]
    kind = draw(st.sampled_from(["owned", "reverse", "owned", "below", "owned", "other"]))
    name = draw(st.sampled_from(owned))
    if kind == "below":  # exact names only: a child of an owned name is not owned
        name = draw(st.text(LDH, min_size=1, max_size=10)) + "." + name
    elif kind == "other":
        name = draw(domain)
    elif kind == "reverse":  # with answers.ptr, the served addresses' reverse names
        ip = draw(st.sampled_from(ips)) if ips and draw(st.booleans()) else draw(v4 | v6)
        name = ipaddress.ip_address(ip).reverse_pointer
    name = random_case(draw, name)
    qtype = draw(st.sampled_from(QTYPES)) or draw(st.integers(1, 65535))
    if kind == "reverse":
        qtype = draw(st.sampled_from([12, 12, 255, 6, 1, 28]))
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


def expected_owner(domains, addresses, key: bytes, ptr: bool):
    """(service, kind) that owns the wire name `key`: kind "name" or "reverse"; else None."""
    for service, ds in domains.items():
        if key in {encode_name(d) for d in ds}:
            return service, "name"
    if ptr:
        for service, ds in domains.items():
            addrs = addresses.get(service)
            if not ds or addrs is None:
                continue
            for ip in (*addrs.v4, *addrs.v6):
                if encode_name(ipaddress.ip_address(ip).reverse_pointer) == key:
                    return service, "reverse"
    return None, None


@given(tables(), st.booleans(), st.data())
def test_every_reply_matches_the_table(table_spec, ptr, data):
    domains, addresses, ttl, serial = table_spec
    table = build_table(domains, addresses, ttl, serial=serial, ptr=ptr)
    msg, proto, when_unknown = data.draw(asks(domains, addresses if ptr else None))
    wire = msg.to_wire()
    resolver = Resolver(table, when_unknown, Stats())
    out = resolver.resolve(wire, proto)
    qname = msg.question[0].name
    key = encode_name(qname.to_text().lower())
    service, kind = expected_owner(domains, addresses, key, ptr)
    addrs = addresses.get(service, Addresses()) if kind == "name" else Addresses()
    v4s = sorted({ipaddress.IPv4Address(a) for a in addrs.v4})
    v6s = sorted({ipaddress.IPv6Address(a) for a in addrs.v6})
    qtype, qclass = msg.question[0].rdtype, msg.question[0].rdclass

    if msg.edns > 0:  # RFC 6891 §6.1.3, before anything else is decided
        assert isinstance(out, Local) and out.source == SOURCE_LOCAL
        assert dns.message.from_wire(out.reply).rcode() == dns.rcode.BADVERS
        event("badvers")
        return
    if service is None:
        assert isinstance(out, Query), "not ours to answer: forwarded"
        assert out.qname == key and out.qtype == qtype and out.qclass == qclass
        event("forwarded")
        return
    # Owned: never forwarded for another class (REFUSED); class ANY gets IN data, no AA.
    known = kind == "reverse" or bool(v4s or v6s)
    if qclass not in (1, 255):
        assert isinstance(out, Local) and out.source == SOURCE_LOCAL
        assert dns.message.from_wire(out.reply).rcode() == dns.rcode.REFUSED
        event("other class refused")
        return
    if not known and when_unknown == "forward":
        assert isinstance(out, Query), "a service without addresses follows when_unknown"
        event("unknown forwarded")
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
    assert reply.rcode() == dns.rcode.NOERROR
    assert bool(reply.flags & dns.flags.AA) == (qclass == 1)
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
    if qtype == dns.rdatatype.ANY:  # RFC 8482 §4.2: one RRset, the addresses first
        qtype = (
            dns.rdatatype.A
            if v4s
            else dns.rdatatype.AAAA
            if v6s
            else dns.rdatatype.PTR
            if kind == "reverse"
            else qtype
        )
    if qtype == dns.rdatatype.A and v4s:
        want, rdtype = v4s, dns.rdatatype.A
    elif qtype == dns.rdatatype.AAAA and v6s:
        want, rdtype = v6s, dns.rdatatype.AAAA
    elif qtype == dns.rdatatype.PTR and kind == "reverse":
        (rrset,) = reply.answer
        assert rrset.rdtype == dns.rdatatype.PTR and rrset.name == qname and rrset.ttl == ttl
        (rd,) = rrset
        assert rd.target == dns.name.from_text(next(iter(domains[service])).lower())
        event("ptr")
        return
    else:  # the name's own SOA: as the answer to SOA, else in authority (NODATA, RFC 2308 §2.2)
        section = reply.answer if qtype == dns.rdatatype.SOA else reply.authority
        assert (reply.answer if section is reply.authority else reply.authority) == []
        (soa,) = section
        assert soa.rdtype == dns.rdatatype.SOA and soa.name == qname and soa.ttl == ttl
        (rd,) = soa
        assert rd.mname == qname and rd.rname == dns.name.Name([b"hostmaster", *qname.labels])
        assert (rd.serial, rd.minimum) == (serial, ttl)
        event("soa" if qtype == dns.rdatatype.SOA else "nodata")
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


@given(tables(), st.data())
def test_reverse_names_with_answers_ptr(table_spec, data):
    """answers.ptr: a served address's reverse name answers PTR with its service's first
    domain (the first service in config order, when two serve it); others are forwarded."""
    domains, addresses, ttl, serial = table_spec
    table = build_table(domains, addresses, ttl, serial=serial, ptr=True)
    served = [ip for a in addresses.values() for ip in (*a.v4, *a.v6)]
    ip = data.draw(st.sampled_from(served) if served else v4)
    if data.draw(st.booleans()):
        ip = data.draw(v4 | v6)  # most likely not served
    name = random_case(data.draw, ipaddress.ip_address(ip).reverse_pointer)
    wire = dns.message.make_query(name, "PTR", use_edns=False).to_wire()
    out = Resolver(table, "servfail", Stats()).resolve(wire, "tcp")
    ip = str(ipaddress.ip_address(ip))
    owner = next(
        (
            s
            for s, a in ((s, addresses.get(s, Addresses())) for s in domains)
            if ip in {str(ipaddress.ip_address(x)) for x in (*a.v4, *a.v6)}
        ),
        None,
    )
    if owner is None:
        assert isinstance(out, Query)
        event("reverse not served: forwarded")
        return
    assert isinstance(out, Local) and out.source == SOURCE_OWNED
    reply = dns.message.from_wire(out.reply)
    (rrset,) = reply.answer
    assert rrset.rdtype == dns.rdatatype.PTR and rrset.ttl == ttl
    assert str(rrset.name) == name + "."
    (rd,) = rrset
    assert rd.target == dns.name.from_text(domains[owner][0].lower())
    event("ptr")

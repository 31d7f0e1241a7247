"""CNAME chains into owned names (sans-IO): forwarded replies built with dnspython go through
the rewriter; what the client would get is parsed back with dnspython."""

from __future__ import annotations

import struct

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pldns.dns.answer import Resolver
from pldns.dns.cname import LOOP, MAX_CHAIN, REWRITTEN, SIGNED, ChainRewriter, may_chain
from pldns.dns.stats import Stats
from pldns.dns.table import Addresses, build_table
from pldns.dns.wire import scan_query

ECI = "eci-vpc.cn-hangzhou.aliyuncs.com."
V6ONLY = "ecs-vpc.cn-hangzhou.aliyuncs.com."
UNKNOWN = "acc-vpc.cn-hangzhou.aliyuncs.com."
PUBLIC = "100.100.1.2"
ECI_IPS = {"10.0.0.1", "10.0.0.2"}
TTL = 30
SERIAL = 4242
ALIAS = "Api.Corp.Example."


def make(when_unknown: str = "forward", ptr: bool = False) -> tuple[ChainRewriter, Stats]:
    table = build_table(
        {"eci": [ECI.rstrip(".")], "ecs": [V6ONLY.rstrip(".")], "acc": [UNKNOWN.rstrip(".")]},
        {"eci": Addresses(v4=tuple(sorted(ECI_IPS))), "ecs": Addresses(v6=("fd00::5",))},
        TTL,
        serial=SERIAL,
        ptr=ptr,
    )
    stats = Stats()
    return ChainRewriter(Resolver(table, when_unknown, stats), stats), stats


def upstream_reply(
    query: dns.message.Message,
    chain: list[tuple[str, str, int]],
    tail: list[tuple[str, str, str]] = (),  # type: ignore[assignment]
    rcode: int = dns.rcode.NOERROR,
    flags: int = 0,
    authority: bool = True,
) -> bytes:
    """What a recursive upstream sends: the chain, the public data at its end, an NS."""
    reply = dns.message.make_response(query)
    reply.flags |= dns.flags.RA | flags
    reply.set_rcode(rcode)
    for owner, target, ttl in chain:
        reply.answer.append(dns.rrset.from_text(owner, ttl, "IN", "CNAME", target))
    for owner, rdtype, rdata in tail:
        reply.answer.append(dns.rrset.from_text(owner, 300, "IN", rdtype, rdata))
    if authority:
        reply.authority.append(
            dns.rrset.from_text("aliyuncs.com.", 300, "IN", "NS", "ns1.aliyuncs.com.")
        )
    return reply.to_wire()


def run(
    query: dns.message.Message, reply: bytes, rewriter: ChainRewriter | None = None
) -> tuple[bytes, dns.message.Message]:
    rewriter = rewriter or make()[0]
    data = query.to_wire()
    q = scan_query(data)
    assert may_chain(reply, q.qend)
    out = rewriter.rewrite(q, reply)
    return out, dns.message.from_wire(out)


def records(msg: dns.message.Message, section: str = "answer") -> list[tuple[str, str, str, int]]:
    return [
        (str(rrset.name).lower(), dns.rdatatype.to_text(rrset.rdtype), rd.to_text(), rrset.ttl)
        for rrset in getattr(msg, section)
        for rd in rrset
    ]


# --- rewritten ------------------------------------------------------------------------


@pytest.mark.parametrize("use_edns", [False, 0])
def test_chain_into_an_owned_name_gets_the_owned_addresses(use_edns):
    query = dns.message.make_query(ALIAS, "A", use_edns=use_edns, want_dnssec=use_edns == 0)
    query.flags |= dns.flags.CD
    reply = upstream_reply(query, [(ALIAS, ECI, 300)], [(ECI, "A", PUBLIC)], flags=dns.flags.CD)
    rewriter, stats = make()
    _, msg = run(query, reply, rewriter)
    assert msg.id == query.id and msg.rcode() == dns.rcode.NOERROR
    assert str(msg.question[0].name) == ALIAS  # the client's spelling
    got = records(msg)
    assert got[0] == (ALIAS.lower(), "CNAME", ECI, TTL)  # TTL capped at the owned TTL
    assert {(name, t, ttl) for name, t, _, ttl in got[1:]} == {(ECI, "A", TTL)}
    assert {rd for _, _, rd, _ in got[1:]} == ECI_IPS
    assert PUBLIC not in str(msg)
    assert msg.authority == [] and msg.additional == []
    assert msg.flags & (dns.flags.QR | dns.flags.RD | dns.flags.RA | dns.flags.CD) == (
        dns.flags.QR | dns.flags.RD | dns.flags.RA | dns.flags.CD
    )
    assert not msg.flags & (dns.flags.AA | dns.flags.AD | dns.flags.TC)
    assert msg.edns == (0 if use_edns == 0 else -1)
    assert bool(msg.ednsflags & dns.flags.DO) == (use_edns == 0)
    assert stats.chains == {REWRITTEN: 1}


def test_long_chain_is_kept_up_to_the_owned_name_and_cut_after_it():
    query = dns.message.make_query(ALIAS, "A")
    chain = [
        (ALIAS, "b.corp.example.", 5),
        ("b.corp.example.", "C.Corp.Example.", 600),
        ("c.corp.example.", ECI, 60),
        (ECI, "eci-vpc.cn-hangzhou.aliyuncs.com.gds.alibabadns.com.", 60),
    ]
    tail = [("eci-vpc.cn-hangzhou.aliyuncs.com.gds.alibabadns.com.", "A", PUBLIC)]
    _, msg = run(query, upstream_reply(query, chain, tail))
    got = records(msg)
    assert [(n, t, rd.lower(), ttl) for n, t, rd, ttl in got[:3]] == [
        (ALIAS.lower(), "CNAME", "b.corp.example.", 5),  # a lower TTL is kept
        ("b.corp.example.", "CNAME", "c.corp.example.", TTL),
        ("c.corp.example.", "CNAME", ECI, TTL),
    ]
    assert got[1][2] == "C.Corp.Example."  # targets spelled as the upstream wrote them
    assert {(name, t) for name, t, _, _ in got[3:]} == {(ECI, "A")}
    assert {rd for _, _, rd, _ in got[3:]} == ECI_IPS


@pytest.mark.parametrize("rdtype", ["AAAA", "MX", "TXT", "HTTPS", "NS"])
def test_other_types_get_nodata_with_the_owned_names_soa(rdtype):
    query = dns.message.make_query(ALIAS, rdtype)
    reply = upstream_reply(query, [(ALIAS, ECI, 300)], [(ECI, "AAAA", "2001:db8::1")])
    _, msg = run(query, reply)
    assert msg.rcode() == dns.rcode.NOERROR
    assert records(msg) == [(ALIAS.lower(), "CNAME", ECI, TTL)]
    ((name, rtype, rdata, ttl),) = records(msg, "authority")
    assert (name, rtype, ttl) == (ECI, "SOA", TTL)
    assert rdata == f"{ECI} hostmaster.{ECI} {SERIAL} 3600 600 86400 {TTL}"


@pytest.mark.parametrize(
    ("rdtype", "owned", "expected"),
    [
        ("AAAA", V6ONLY, {("AAAA", "fd00::5")}),
        ("ANY", V6ONLY, {("AAAA", "fd00::5")}),
        ("ANY", ECI, {("A", ip) for ip in ECI_IPS}),
    ],
)
def test_aaaa_and_any_get_what_the_owned_name_gets(rdtype, owned, expected):
    query = dns.message.make_query(ALIAS, rdtype)
    _, msg = run(query, upstream_reply(query, [(ALIAS, owned, 300)], [(owned, "A", PUBLIC)]))
    assert {(t, rd) for name, t, rd, _ in records(msg)[1:] if name == owned} == expected


def test_soa_query_through_a_chain_gets_the_owned_soa():
    query = dns.message.make_query(ALIAS, "SOA")
    _, msg = run(query, upstream_reply(query, [(ALIAS, ECI, 300)]))
    assert [(n, t) for n, t, _, _ in records(msg)] == [(ALIAS.lower(), "CNAME"), (ECI, "SOA")]


def test_public_nxdomain_at_the_owned_name_becomes_the_owned_answer():
    query = dns.message.make_query(ALIAS, "A")
    reply = upstream_reply(query, [(ALIAS, ECI, 300)], rcode=dns.rcode.NXDOMAIN)
    _, msg = run(query, reply)
    assert msg.rcode() == dns.rcode.NOERROR
    assert {rd for _, t, rd, _ in records(msg) if t == "A"} == ECI_IPS


def test_chain_to_a_reverse_name_with_ptr():
    query = dns.message.make_query("5.0-25.1.0.10.in-addr.arpa.", "PTR")
    reply = upstream_reply(
        query,
        [("5.0-25.1.0.10.in-addr.arpa.", "1.0.0.10.in-addr.arpa.", 300)],
        [("1.0.0.10.in-addr.arpa.", "PTR", "public.example.")],
    )
    _, msg = run(query, reply, make(ptr=True)[0])
    assert records(msg)[1] == ("1.0.0.10.in-addr.arpa.", "PTR", ECI, TTL)


def test_uncompressed_upstream_reply():
    query = dns.message.make_query(ALIAS, "A")
    q = scan_query(query.to_wire())
    alias, eci = dns.name.from_text(ALIAS).to_wire(), dns.name.from_text(ECI).to_wire()
    answer = (
        alias + struct.pack("!HHIH", 5, 1, 300, len(eci)) + eci
        + eci + struct.pack("!HHIH", 1, 1, 300, 4) + bytes([100, 100, 1, 2])
    )  # fmt: skip
    reply = struct.pack("!6H", query.id, 0x8180, 1, 2, 0, 0) + query.to_wire()[12 : q.qend]
    _, msg = run(query, reply + answer)
    assert {rd for _, t, rd, _ in records(msg) if t == "A"} == ECI_IPS


def test_unknown_service_follows_when_unknown():
    query = dns.message.make_query(ALIAS, "A")
    reply = upstream_reply(query, [(ALIAS, UNKNOWN, 300)], [(UNKNOWN, "A", PUBLIC)])
    rewriter, stats = make("forward")
    out, _ = run(query, reply, rewriter)
    assert out == reply and not stats.chains
    rewriter, stats = make("servfail")
    _, msg = run(query, reply, rewriter)
    assert msg.rcode() == dns.rcode.SERVFAIL and msg.answer == []
    assert stats.chains == {REWRITTEN: 1}


def test_rotation_moves_on_like_the_owned_answers():
    rewriter, _ = make()
    query = dns.message.make_query(ALIAS, "A")
    reply = upstream_reply(query, [(ALIAS, ECI, 300)], [(ECI, "A", PUBLIC)])
    firsts = {records(run(query, reply, rewriter)[1])[1][2] for _ in range(4)}
    assert firsts == ECI_IPS


# --- left alone -----------------------------------------------------------------------


@pytest.mark.parametrize("how", ["ad", "rrsig-answer", "rrsig-authority"])
def test_signed_answers_are_left_alone_and_counted(how):
    query = dns.message.make_query(ALIAS, "A", want_dnssec=True)
    response = dns.message.from_wire(
        upstream_reply(
            query,
            [(ALIAS, ECI, 300)],
            [(ECI, "A", PUBLIC)],
            flags=dns.flags.AD if how == "ad" else 0,
        )
    )
    sig = "CNAME 8 3 300 20300101000000 20200101000000 12345 corp.example. AAAA"
    if how == "rrsig-answer":
        response.answer.append(dns.rrset.from_text(ALIAS, 300, "IN", "RRSIG", sig))
    elif how == "rrsig-authority":
        response.authority.append(dns.rrset.from_text("corp.example.", 300, "IN", "RRSIG", sig))
    reply = response.to_wire()
    rewriter, stats = make()
    out, _ = run(query, reply, rewriter)
    assert out == reply
    assert stats.chains == {SIGNED: 1}


def test_loops_and_overlong_chains_are_left_alone_and_counted():
    rewriter, stats = make()
    query = dns.message.make_query(ALIAS, "A")
    loop = upstream_reply(query, [(ALIAS, "b.example.", 60), ("b.example.", ALIAS, 60)])
    assert run(query, loop, rewriter)[0] == loop
    links = [f"l{i}.example." for i in range(MAX_CHAIN + 1)]
    names = [ALIAS, *links]
    chain = [(names[i], names[i + 1], 60) for i in range(len(links))]
    too_long = upstream_reply(query, [*chain, (links[-1], ECI, 60)])
    assert run(query, too_long, rewriter)[0] == too_long
    assert stats.chains == {LOOP: 2}
    # MAX_CHAIN links exactly is fine.
    names = [ALIAS, *links[: MAX_CHAIN - 1], ECI]
    chain = [(names[i], names[i + 1], 60) for i in range(MAX_CHAIN)]
    _, msg = run(query, upstream_reply(query, chain), rewriter)
    assert len(records(msg)) == MAX_CHAIN + len(ECI_IPS)
    assert stats.chains[REWRITTEN] == 1


@pytest.mark.parametrize(
    ("rdtype", "chain", "kw"),
    [
        ("A", [(ALIAS, "www.example.net.", 60)], {}),  # reaches no owned name
        ("CNAME", [(ALIAS, ECI, 60)], {}),  # the client asked for the alias itself
        ("A", [(ALIAS, ECI, 60)], {"rcode": dns.rcode.SERVFAIL}),
        ("A", [(ALIAS, ECI, 60)], {"flags": dns.flags.TC}),
        ("A", [("other.example.", ECI, 60)], {}),  # a CNAME not on the chain
    ],
    ids=["no-owned-name", "cname-query", "servfail", "truncated", "off-chain"],
)
def test_left_alone_and_not_counted(rdtype, chain, kw):
    rewriter, stats = make()
    query = dns.message.make_query(ALIAS, rdtype)
    reply = upstream_reply(query, chain, **kw)
    assert run(query, reply, rewriter)[0] == reply
    assert not stats.chains


def test_ordinary_replies_skip_the_slow_path():
    query = dns.message.make_query("www.example.net.", "A")
    reply = dns.message.make_response(query)
    reply.answer.append(dns.rrset.from_text("www.example.net.", 300, "IN", "A", "192.0.2.1"))
    reply.authority.append(dns.rrset.from_text("example.net.", 300, "IN", "NS", "ns.example."))
    q = scan_query(query.to_wire())
    assert not may_chain(reply.to_wire(), q.qend)
    # A CNAME query's own question holds the pattern, but only the question does.
    cq = dns.message.make_query("www.example.net.", "CNAME")
    wire = dns.message.make_response(cq).to_wire()
    assert not may_chain(wire, scan_query(cq.to_wire()).qend)


# --- malformed upstream replies -------------------------------------------------------

_QUERY = dns.message.make_query(ALIAS, "A")
_GOOD = upstream_reply(_QUERY, [(ALIAS, ECI, 300)], [(ECI, "A", PUBLIC)])


@pytest.mark.parametrize(
    "reply",
    [
        _GOOD[:-3],  # truncated rdata
        _GOOD[: len(_GOOD) - 40],  # cut in the middle
        _GOOD + b"\x00",  # trailing byte: still parses up to the counts, left as is if odd
        _GOOD[:6] + b"\x00\x09" + _GOOD[8:],  # ANCOUNT larger than the records
        _GOOD.replace(b"\xc0\x0c", b"\xc0\xff", 1),  # forward compression pointer
    ],
    ids=["rdata-cut", "mid-cut", "trailing", "ancount", "forward-pointer"],
)
def test_malformed_replies_never_raise(reply):
    rewriter, _ = make()
    data = _QUERY.to_wire()
    q = scan_query(data)
    out = rewriter.rewrite(q, reply)
    assert isinstance(out, bytes)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=len(_GOOD)))
def test_fuzzed_replies_never_raise(junk, cut):
    rewriter, _ = make()
    data = _QUERY.to_wire()
    q = scan_query(data)
    reply = _GOOD[: max(cut, q.qend)] + junk
    out = rewriter.rewrite(q, reply)
    assert isinstance(out, bytes)
    if out != reply:
        dns.message.from_wire(out)  # whatever we made parses

"""Table-driven tests for pldns.dns.wire: scanning queries, building errors, upstream rewriting.

Queries are built with dnspython (or by hand where they must be malformed) and our replies are
parsed with dnspython, so the checks do not depend on our own encoder.
"""

from __future__ import annotations

import random
import struct

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest

from pldns.dns.rcode import (
    BADVERS,
    FORMERR,
    REFUSED,
    SERVFAIL,
    DnsError,
    Drop,
    FormatError,
    NotImplementedOpcode,
)
from pldns.dns.rcode import (
    NOTIMP as RCODE_NOTIMP,
)
from pldns.dns.wire import (
    OUR_PAYLOAD,
    build_error,
    build_upstream_query,
    reply_matches,
    scan_query,
    strip_hop_by_hop,
    truncate,
)

NAME = "eci-vpc.cn-hangzhou.aliyuncs.com."
WIRE_NAME = b"\x07eci-vpc\x0bcn-hangzhou\x08aliyuncs\x03com\x00"
QTAIL = b"\x00\x01\x00\x01"  # A, IN


def header(flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!6H", 0x1234, flags, qd, an, ns, ar)


def opt_rr(payload: int = 1232, version: int = 0, do: bool = False, rdata: bytes = b"") -> bytes:
    ttl = (version << 16) | (0x8000 if do else 0)
    return b"\x00" + struct.pack("!HHIH", 41, payload, ttl, len(rdata)) + rdata


def plain(name: str = NAME, rdtype: str = "A") -> bytes:
    return dns.message.make_query(name, rdtype, use_edns=False).to_wire()


def edns(payload: int = 1232, do: bool = False, options: list | None = None, **kw) -> bytes:
    msg = dns.message.make_query(
        NAME, "A", use_edns=0, payload=payload, want_dnssec=do, options=options or [], **kw
    )
    return msg.to_wire()


Q = header() + WIRE_NAME + QTAIL  # a minimal hand-made query
LONG_LABEL = b"\x3f" + b"a" * 63


# --- scan_query: servable queries -------------------------------------------------------


def test_scan_plain_query_keeps_case_in_question_and_lowers_key():
    data = plain("EcI-VPC.Cn-HangZhou.aliyuncs.com", "AAAA")
    q = scan_query(data)
    assert q.qname == WIRE_NAME
    assert (q.qtype, q.qclass, q.opt) == (28, 1, None)
    assert q.qend == len(data)
    assert data[12 : q.qend - 4] == b"\x07EcI-VPC\x0bCn-HangZhou\x08aliyuncs\x03com\x00"


@pytest.mark.parametrize(
    ("data", "payload", "version", "do", "options"),
    [
        (edns(4096), 4096, 0, False, b""),
        (edns(100), 512, 0, False, b""),  # floor at 512 (RFC 6891 §6.2.5)
        (edns(0), 512, 0, False, b""),
        (edns(1232, do=True), 1232, 0, True, b""),
        (header(ar=1) + WIRE_NAME + QTAIL + opt_rr(1400, version=1), 1400, 1, False, b""),
        (
            edns(options=[dns.edns.GenericOption(65001, b"xy")]),
            1232,
            0,
            False,
            b"\xfd\xe9\x00\x02xy",
        ),
    ],
    ids=["4096", "floor-100", "floor-0", "do", "version-1", "options-raw"],
)
def test_scan_opt(data, payload, version, do, options):
    opt = scan_query(data).opt
    assert opt is not None
    assert (opt.payload, opt.version, opt.do, opt.options) == (payload, version, do, options)


@pytest.mark.parametrize(
    "data",
    [
        header() + LONG_LABEL * 3 + b"\x3d" + b"b" * 61 + b"\x00" + QTAIL,  # exactly 255
        header(ar=1) + WIRE_NAME + QTAIL + b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 0, 4) + b"1234",
    ],
    ids=["name-255", "backward-pointer-in-additional"],
)
def test_scan_accepts_edge_cases(data):
    assert scan_query(data).qtype == 1


# --- scan_query: rejected queries -------------------------------------------------------

DROPS = {
    "empty": b"",
    "runt-11": Q[:11],
    "qr-set": header(flags=0x8100) + WIRE_NAME + QTAIL,
}

NOTIMP = {
    "iquery": header(flags=1 << 11) + WIRE_NAME + QTAIL,
    "notify": header(flags=4 << 11) + WIRE_NAME + QTAIL,
    "update": header(flags=5 << 11) + WIRE_NAME + QTAIL,
}

_PTR_SELF = 12 + len(WIRE_NAME) + 4  # offset of the additional record's owner name
FORMERRS = {
    "qdcount-0": header(qd=0),
    "qdcount-2": header(qd=2) + (WIRE_NAME + QTAIL) * 2,
    "header-only": header(),
    "truncated-name": header() + WIRE_NAME[:5],
    "name-no-root": header() + WIRE_NAME[:-1],
    "truncated-qtype": header() + WIRE_NAME + b"\x00",
    "truncated-qclass": header() + WIRE_NAME + b"\x00\x01\x00",
    "label-64": header() + b"\x40" + b"a" * 64 + b"\x00" + QTAIL,
    "label-type-0x40": header() + b"\x41" + b"a" * 10 + b"\x00" + QTAIL,
    "label-type-0x80": header() + b"\x81" + b"a" * 10 + b"\x00" + QTAIL,
    "pointer-in-question": header() + b"\xc0\x0c" + QTAIL,
    "name-256": header() + LONG_LABEL * 3 + b"\x3e" + b"b" * 62 + b"\x00" + QTAIL,
    "name-321": header() + LONG_LABEL * 5 + b"\x00" + QTAIL,
    "trailing-junk": Q + b"\x00",
    "trailing-junk-after-opt": header(ar=1) + WIRE_NAME + QTAIL + opt_rr() + b"junk",
    "ar-count-but-no-record": Q[:11] + b"\x01" + Q[12:],
    "truncated-opt": (header(ar=1) + WIRE_NAME + QTAIL + opt_rr())[:-3],
    "opt-rdlen-too-long": header(ar=1) + WIRE_NAME + QTAIL + opt_rr()[:-2] + b"\x00\x09",
    "two-opts": header(ar=2) + WIRE_NAME + QTAIL + opt_rr() + opt_rr(),
    "opt-in-answer": header(an=1) + WIRE_NAME + QTAIL + opt_rr(),
    "opt-in-authority": header(ns=1) + WIRE_NAME + QTAIL + opt_rr(),
    "opt-non-root-owner": header(ar=1) + WIRE_NAME + QTAIL + b"\x01a" + opt_rr(),
    "opt-owner-pointer": header(ar=1) + WIRE_NAME + QTAIL + b"\xc0\x0c" + opt_rr()[1:],
    "pointer-to-itself": header(ar=1)
    + WIRE_NAME
    + QTAIL
    + struct.pack("!H", 0xC000 | _PTR_SELF)
    + struct.pack("!HHIH", 1, 1, 0, 0),
    "pointer-forwards": header(ar=1)
    + WIRE_NAME
    + QTAIL
    + struct.pack("!H", 0xC000 | (_PTR_SELF + 2))
    + struct.pack("!HHIH", 1, 1, 0, 0),
    "pointer-cut": header(ar=1) + WIRE_NAME + QTAIL + b"\xc0",
    "bad-label-type-in-additional": header(ar=1) + WIRE_NAME + QTAIL + b"\x41a" + opt_rr()[1:],
    "name-256-in-additional": header(ar=1)
    + WIRE_NAME
    + QTAIL
    + LONG_LABEL * 3
    + b"\x3e"
    + b"b" * 62
    + b"\x00"
    + struct.pack("!HHIH", 1, 1, 0, 0),
}


@pytest.mark.parametrize(
    ("data", "error"),
    [pytest.param(d, Drop, id=k) for k, d in DROPS.items()]
    + [pytest.param(d, NotImplementedOpcode, id=k) for k, d in NOTIMP.items()]
    + [pytest.param(d, FormatError, id=k) for k, d in FORMERRS.items()],
)
def test_scan_rejects(data, error):
    with pytest.raises(error):
        scan_query(data)


def test_every_truncation_of_an_edns_query_is_rejected_cleanly():
    data = edns(4096, do=True, options=[dns.edns.GenericOption(65001, b"abcdef")])
    scan_query(data)
    for length in range(len(data)):
        with pytest.raises((Drop, FormatError)):
            scan_query(data[:length])


def test_random_junk_never_raises_anything_else():
    rng = random.Random(6891)
    seed = edns(4096, do=True, options=[dns.edns.GenericOption(8, b"\x00\x01\x18\x00\x0a\x00")])
    for _ in range(4000):
        if rng.random() < 0.5:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(80)))
        else:  # mutate a valid query so the scanner gets past the header more often
            buf = bytearray(seed)
            for _ in range(rng.randrange(1, 4)):
                buf[rng.randrange(len(buf))] = rng.randrange(256)
            data = bytes(buf[: rng.randrange(len(buf) + 1)])
        try:
            q = scan_query(data)
        except (Drop, DnsError):
            continue
        assert 12 < q.qend <= len(data)


# --- build_error ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("qend", "questions"), [(0, 0), (len(Q), 1)], ids=["no-question", "with-question"]
)
def test_formerr(qend, questions):
    msg = dns.message.from_wire(build_error(Q, FORMERR, qend))
    assert msg.id == 0x1234
    assert msg.rcode() == dns.rcode.FORMERR
    assert len(msg.question) == questions
    assert msg.edns == -1


def test_badvers_goes_in_the_extended_rcode():
    data = header(ar=1) + WIRE_NAME + QTAIL + opt_rr(4096, version=1, do=True)
    q = scan_query(data)
    msg = dns.message.from_wire(build_error(data, BADVERS, q.qend, q.opt))
    assert msg.rcode() == dns.rcode.BADVERS
    assert (msg.edns, msg.payload) == (0, OUR_PAYLOAD)
    assert msg.ednsflags & dns.flags.DO
    assert msg.question[0].name == dns.name.from_text(NAME)


_ALL_QUERY_FLAGS = dns.flags.RD | dns.flags.CD | dns.flags.AD | dns.flags.AA | dns.flags.TC | 0x40


@pytest.mark.parametrize(
    ("query_flags", "rd", "cd"),
    [
        (dns.flags.RD, True, False),
        (0, False, False),
        (dns.flags.RD | dns.flags.CD, True, True),
        (dns.flags.CD | dns.flags.AD, False, True),
        (dns.flags.RD | dns.flags.AD | dns.flags.AA | dns.flags.TC, True, False),
        (_ALL_QUERY_FLAGS, True, True),
    ],
    ids=["rd", "none", "rd-cd", "cd-ad", "rd-ad-aa-tc", "all-and-z"],
)
@pytest.mark.parametrize(
    "rcode", [FORMERR, REFUSED, SERVFAIL], ids=["formerr", "refused", "servfail"]
)
def test_error_flags(query_flags, rd, cd, rcode):
    """RD copied always; CD copied only into answers to queries we understood (REFUSED,
    SERVFAIL: RFC 4035 §3.2.2), never into FORMERR; RA set (a recursive-facing proxy);
    AD, AA, TC and Z never."""
    data = header(flags=query_flags) + WIRE_NAME + QTAIL
    msg = dns.message.from_wire(build_error(data, rcode, len(data)))
    assert msg.rcode() == rcode
    assert msg.flags & dns.flags.QR
    assert msg.flags & dns.flags.RA
    assert bool(msg.flags & dns.flags.RD) == rd
    assert bool(msg.flags & dns.flags.CD) == (cd and rcode != FORMERR)
    assert not msg.flags & (dns.flags.AD | dns.flags.AA | dns.flags.TC | 0x40)


@pytest.mark.parametrize("opcode", [1, 2, 4, 5, 6, 15])
def test_notimp_copies_opcode_and_rd_only(opcode):
    """genreport's `opcodeflg`: every flag set on an unknown opcode; the NOTIMP keeps the
    opcode and RD (RFC 1035 §4.1.1) and nothing else: RA, AD, CD and AA mean something only
    for QUERY."""
    data = header(flags=(opcode << 11) | _ALL_QUERY_FLAGS | dns.flags.RA)
    msg = dns.message.from_wire(build_error(data, RCODE_NOTIMP, 0))
    assert msg.opcode() == opcode and msg.rcode() == dns.rcode.NOTIMP
    assert msg.flags & (dns.flags.QR | dns.flags.RD) == dns.flags.QR | dns.flags.RD
    assert not msg.flags & (dns.flags.RA | dns.flags.AD | dns.flags.CD | dns.flags.AA)
    assert not msg.flags & (dns.flags.TC | 0x40)


def test_error_keeps_opcode():
    data = header(flags=(4 << 11) | 0x0100) + WIRE_NAME + QTAIL
    msg = dns.message.from_wire(build_error(data, 4, 0))
    assert msg.opcode() == dns.opcode.NOTIFY
    assert msg.rcode() == dns.rcode.NOTIMP


# --- build_upstream_query ---------------------------------------------------------------


def _upstream(data: bytes, qid: int = 0xBEEF) -> dns.message.Message:
    out = build_upstream_query(data, scan_query(data), qid)
    return dns.message.from_wire(out)


def test_upstream_query_gets_fresh_id_and_our_payload():
    data = edns(4096, do=True, flags=dns.flags.RD | dns.flags.CD)
    msg = _upstream(data)
    assert msg.id == 0xBEEF
    assert (msg.edns, msg.payload) == (0, OUR_PAYLOAD)
    assert msg.ednsflags & dns.flags.DO
    assert msg.flags & dns.flags.RD and msg.flags & dns.flags.CD
    assert msg.question[0].name == dns.name.from_text(NAME)


@pytest.mark.parametrize(
    ("options", "kept"),
    [
        ([dns.edns.CookieOption(b"12345678", b"")], []),
        ([dns.edns.GenericOption(11, b"\x00\x64")], []),
        ([dns.edns.GenericOption(12, b"\x00" * 16)], []),
        ([dns.edns.ECSOption("192.0.2.0", 24)], [8]),
        ([dns.edns.GenericOption(65001, b"hi")], [65001]),
        (
            [
                dns.edns.GenericOption(12, b"\x00" * 4),
                dns.edns.ECSOption("192.0.2.0", 24),
                dns.edns.CookieOption(b"abcdefgh", b""),
                dns.edns.GenericOption(65001, b"hi"),
                dns.edns.GenericOption(11, b""),
            ],
            [8, 65001],
        ),
    ],
    ids=["cookie", "keepalive", "padding", "ecs", "unknown", "mixed"],
)
def test_upstream_query_drops_hop_by_hop_options(options, kept):
    msg = _upstream(edns(options=options))
    assert [int(o.otype) for o in msg.options] == kept
    for option in msg.options:  # kept options are byte-identical
        assert option in options


def test_upstream_query_without_edns_changes_only_the_id():
    data = plain()
    out = build_upstream_query(data, scan_query(data), 0xBEEF)
    assert out == b"\xbe\xef" + data[2:]


def test_upstream_query_drops_other_additional_records():
    data = (
        header(ar=1) + WIRE_NAME + QTAIL + b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 0, 4) + b"1234"
    )
    msg = _upstream(data)
    assert msg.additional == [] and msg.edns == -1


@pytest.mark.parametrize(
    "options",
    [b"\x00", b"\x00\x08\x00", b"\x00\x08\x00\x05ab", b"\x00\x0a\x00\x00\x00\x08"],
    ids=["1-byte", "3-bytes", "length-overrun", "trailing-partial"],
)
def test_malformed_options_are_formerr(options):
    with pytest.raises(FormatError):
        strip_hop_by_hop(options)
    data = header(ar=1) + WIRE_NAME + QTAIL + opt_rr(rdata=options)
    with pytest.raises(FormatError):
        build_upstream_query(data, scan_query(data), 1)


# --- reply_matches ----------------------------------------------------------------------


def _reply(query: dns.message.Message, **changes) -> bytes:
    r = dns.message.make_response(query)
    for key, value in changes.items():
        setattr(r, key, value)
    return r.to_wire()


QUERY = dns.message.make_query(NAME, "A", id=0x4242)
QUERY_WIRE = QUERY.to_wire()
QUESTION = QUERY_WIRE[12 : scan_query(QUERY_WIRE).qend].lower()


@pytest.mark.parametrize(
    ("reply", "ok"),
    [
        (_reply(QUERY), True),
        (_reply(QUERY, id=0x4243), False),
        (_reply(dns.message.make_query("eci.cn-hangzhou.aliyuncs.com.", "A", id=0x4242)), False),
        (_reply(dns.message.make_query(NAME.upper(), "A", id=0x4242)), True),
        (_reply(dns.message.make_query(NAME, "AAAA", id=0x4242)), False),
        (QUERY_WIRE, False),
        (_reply(QUERY, question=[]), False),
        (_reply(QUERY)[:20], False),
        (_reply(QUERY)[:11], False),
    ],
    ids=[
        "match",
        "wrong-id",
        "wrong-name",
        "other-case",
        "wrong-type",
        "qr-0",
        "qdcount-0",
        "truncated",
        "runt",
    ],
)
def test_reply_matches(reply, ok):
    assert reply_matches(reply, 0x4242, QUESTION) is ok


# --- truncate ---------------------------------------------------------------------------


@pytest.mark.parametrize("with_opt", [False, True], ids=["no-edns", "edns"])
def test_truncate(with_opt):
    query = dns.message.make_query(
        "EcI-VPC.cn-hangzhou.aliyuncs.com", "A", use_edns=0 if with_opt else False
    )
    data = query.to_wire()
    q = scan_query(data)
    full = dns.message.make_response(query)
    full.flags |= dns.flags.AA
    rrset = full.find_rrset(full.answer, query.question[0].name, 1, 1, create=True)
    for i in range(60):
        rrset.add(dns.rdata.from_text(1, 1, f"10.0.0.{i}"))
    out = truncate(full.to_wire(), q.qend, q.opt)
    _, flags, qd, an, ns, ar = struct.unpack_from("!6H", out)
    assert flags & dns.flags.TC
    assert (qd, an, ns, ar) == (1, 0, 0, 1 if with_opt else 0)
    msg = dns.message.from_wire(out)
    assert msg.id == query.id
    assert msg.answer == []
    assert str(msg.question[0].name) == "EcI-VPC.cn-hangzhou.aliyuncs.com."
    assert msg.edns == (0 if with_opt else -1)

"""Property-based tests for pldns.dns.wire, with dnspython as the oracle.

Hypothesis generates queries (every header bit, names in any case and with any byte, a
question count of 0-2, extra records whose names dnspython compresses against the question,
an OPT with any payload size, version, flags and options) and garbage (random bytes, and
valid queries with bytes flipped, cut or spliced). What we scan, and every reply or upstream
query we build, is checked against what dnspython makes of the same bytes.

The settings profile (examples per test, no example database) is set in tests/conftest.py.
"""

from __future__ import annotations

import struct

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from hypothesis import assume, event, given
from hypothesis import strategies as st

from pldns.dns.rcode import (
    BADVERS,
    FORMERR,
    NOTIMP,
    NXDOMAIN,
    REFUSED,
    SERVFAIL,
    DnsError,
    Drop,
    FormatError,
    NotImplementedOpcode,
)
from pldns.dns.wire import (
    OUR_PAYLOAD,
    UDP_MIN,
    build_answer,
    build_error,
    build_upstream_query,
    decode_name,
    reply_matches,
    scan_query,
    truncate,
)

# --- strategies ---------------------------------------------------------------------------

# EDNS options that belong to one hop (RFC 7873 §5.1 cookie, RFC 7828 §3.2 keepalive, RFC 7830
# §3 padding): written out here, not imported, so the oracle does not share a bug with wire.py.
HOP_BY_HOP_OPTIONS = frozenset({10, 11, 12})

LDH = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-"
label = st.one_of(
    st.text(LDH, min_size=1, max_size=63).map(str.encode),
    st.binary(min_size=1, max_size=63),  # any byte is legal in a label (RFC 2181 §11)
)


@st.composite
def names(draw: st.DrawFn, max_labels: int = 8) -> dns.name.Name:
    """An absolute name of at most 255 wire bytes (labels dropped from the left to fit)."""
    labels = draw(st.lists(label, max_size=max_labels))
    while sum(len(x) + 1 for x in labels) + 1 > 255:
        labels.pop(0)
    return dns.name.Name([*labels, b""])


@st.composite
def long_names(draw: st.DrawFn) -> dns.name.Name:
    """Names at the 255-byte limit, where off-by-one errors live."""
    size = draw(st.integers(250, 255))
    labels: list[bytes] = []
    left = size - 1
    while left > 1:
        n = min(63, left - 1)
        labels.append(b"a" * n)
        left -= n + 1
    return dns.name.Name([*labels, b""])


any_name = st.one_of(names(), long_names())
u16 = st.integers(0, 0xFFFF)

# Option codes dnspython parses into structured classes; random data would not parse back,
# so options kept upstream avoid them. Hop-by-hop options (never forwarded) use any data.
_STRUCTURED = {int(t) for t in dns.edns._type_to_class}  # type: ignore[attr-defined]
kept_code = u16.filter(lambda c: c not in _STRUCTURED and c not in HOP_BY_HOP_OPTIONS)
option = st.one_of(
    st.tuples(kept_code, st.binary(max_size=40)),
    st.tuples(st.sampled_from(sorted(HOP_BY_HOP_OPTIONS)), st.binary(max_size=40)),
)


class Opt:
    def __init__(self, payload: int, version: int, ednsflags: int, options: list) -> None:
        self.payload, self.version, self.ednsflags, self.options = (
            payload,
            version,
            ednsflags,
            options,
        )


opts = st.builds(
    Opt,
    payload=u16,
    version=st.integers(0, 255),
    ednsflags=st.integers(0, 0xFFFFFFFF),  # extended RCODE, DO and the Z bits
    options=st.lists(option, max_size=5),
)


@st.composite
def records(draw: st.DrawFn, near: dns.name.Name) -> dns.rrset.RRset:
    """A record whose owner (and, for CNAME/MX, target) dnspython may compress against `near`."""
    choices = [st.just(near), names(max_labels=3)]
    room = min(63, 255 - len(near.to_wire()) - 1)
    if room >= 1:  # a child of the question name: compressed to a label and a pointer
        choices.append(
            st.binary(min_size=1, max_size=room).map(lambda x: dns.name.Name([x, *near.labels]))
        )
    owner = draw(st.one_of(choices))
    kind = draw(st.sampled_from(["A", "AAAA", "CNAME", "MX", "TXT", "generic"]))
    ttl = draw(st.integers(0, 0x7FFFFFFF))
    if kind == "A":
        rd = dns.rdata.from_wire(1, 1, draw(st.binary(min_size=4, max_size=4)), 0, 4)
    elif kind == "AAAA":
        rd = dns.rdata.from_wire(1, 28, draw(st.binary(min_size=16, max_size=16)), 0, 16)
    elif kind == "CNAME":
        rd = dns.rdata.from_text(1, 5, draw(st.sampled_from([near, dns.name.root])).to_text())
    elif kind == "MX":
        rd = dns.rdata.from_text(1, 15, f"10 {near.to_text()}")
    elif kind == "TXT":
        rd = dns.rdata.from_text(1, 16, '"' + draw(st.text(LDH, max_size=30)) + '"')
    else:  # a private-use type with any rdata (RFC 3597)
        rd = dns.rdata.GenericRdata(
            draw(st.integers(1, 0xFFFF)),
            draw(st.integers(65280, 65534)),
            draw(st.binary(max_size=30)),
        )
    return dns.rrset.from_rdata(owner, ttl, rd)


class Case:
    """A generated query: its bytes, and what was put in it."""

    def __init__(self, wire: bytes, msg: dns.message.Message, flags: int, opt: Opt | None):
        self.wire, self.msg, self.flags, self.opt = wire, msg, flags, opt


@st.composite
def queries(draw: st.DrawFn, servable: bool = False) -> Case:
    """A query built by dnspython; `servable` keeps QR=0, opcode QUERY and one question."""
    msg = dns.message.Message(id=draw(u16))
    qcount = 1 if servable else draw(st.sampled_from([1, 1, 1, 0, 2]))
    for _ in range(qcount):
        msg.question.append(dns.rrset.RRset(draw(any_name), draw(u16), draw(u16)))
    near = msg.question[0].name if msg.question else dns.name.root
    for section in (msg.answer, msg.authority, msg.additional):
        section.extend(draw(st.lists(records(near), max_size=2)))
    opt = draw(st.none() | opts)
    if opt is not None:
        msg.use_edns(
            opt.version,
            opt.ednsflags & 0xFF00FFFF,
            opt.payload,
            options=[dns.edns.GenericOption(c, d) for c, d in opt.options],
        )
        msg.ednsflags = opt.ednsflags & 0xFF00FFFF | opt.version << 16
    flags = draw(u16)
    if servable:
        flags &= ~0xF800  # QR=0, opcode QUERY; every other bit (AA TC RD RA Z AD CD RCODE) any
    try:
        wire = bytearray(msg.to_wire(max_size=65535))
    except dns.exception.TooBig:
        assume(False)
    wire[2:4] = flags.to_bytes(2, "big")
    return Case(bytes(wire), msg, flags, opt)


def question_bytes(msg: dns.message.Message) -> bytes:
    rr = msg.question[0]
    return rr.name.to_wire() + struct.pack("!HH", rr.rdtype, rr.rdclass)


def parse(wire: bytes) -> dns.message.Message:
    return dns.message.from_wire(wire)


# --- scan_query ---------------------------------------------------------------------------


@given(queries())
def test_scan_agrees_with_what_was_generated(case: Case):
    flags = case.flags
    try:
        q = scan_query(case.wire)
    except Drop:
        assert flags & 0x8000, "dropped a query with QR=0"
        return
    except NotImplementedOpcode:
        assert not flags & 0x8000
        assert flags & 0x7800, "NOTIMP for opcode QUERY"
        return
    except FormatError as err:
        assert not flags & 0xF800
        assert len(case.msg.question) != 1, f"FORMERR ({err}) for a well-formed query"
        return
    assert not flags & 0xF800 and len(case.msg.question) == 1
    question = question_bytes(case.msg)
    rr = case.msg.question[0]
    assert q.qname == rr.name.canonicalize().to_wire()  # RFC 4343: ASCII letters only
    assert (q.qtype, q.qclass) == (rr.rdtype, rr.rdclass)
    assert case.wire[12 : q.qend] == question
    if case.opt is None:
        assert q.opt is None
    else:
        assert q.opt is not None
        assert q.opt.payload == max(case.opt.payload, UDP_MIN)
        assert q.opt.version == case.opt.version
        assert q.opt.do == bool(case.opt.ednsflags & 0x8000)
        assert q.opt.options == b"".join(
            struct.pack("!HH", c, len(d)) + d for c, d in case.opt.options
        )


def _mutations(seed: bytes) -> st.SearchStrategy[bytes]:
    if not seed:
        return st.binary(max_size=20)
    return st.one_of(
        st.integers(min(12, len(seed)), len(seed)).map(lambda n: seed[:n]),
        st.tuples(st.integers(0, len(seed) - 1), st.integers(0, 255)).map(
            lambda t: seed[: t[0]] + bytes((t[1],)) + seed[t[0] + 1 :]
        ),
        st.tuples(st.integers(0, len(seed)), st.binary(min_size=1, max_size=8)).map(
            lambda t: seed[: t[0]] + t[1] + seed[t[0] :]
        ),
    )


garbage = st.one_of(
    st.binary(max_size=300),
    queries().flatmap(lambda c: _mutations(c.wire)),
    queries(servable=True).flatmap(lambda c: _mutations(c.wire)),
    queries(servable=True).flatmap(lambda c: _mutations(c.wire).flatmap(_mutations)),
)


def _question_has_pointer(data: bytes) -> bool:
    """Does the question name (labels from offset 12) reach a compression pointer?"""
    i = 12
    while i < len(data) and data[i]:
        if data[i] & 0xC0 == 0xC0:
            return True
        i += data[i] + 1
    return False


def _dnspython_query(data: bytes) -> dns.message.Message | None:
    """dnspython's reading of the bytes, or None if it rejects them."""
    try:
        return dns.message.from_wire(data, keyring=False)
    except Exception:  # any rejection counts: this is the oracle saying "malformed"
        return None


@given(garbage)
def test_garbage_raises_only_the_documented_errors(data: bytes):
    """Never an exception other than Drop or a DnsError; what dnspython reads, we read alike."""
    try:
        q = scan_query(data)
    except (Drop, DnsError) as err:
        scanned = err
        event(f"raised {type(err).__name__}")
    else:
        scanned = None
        event("we read it")
        assert 12 < q.qend <= len(data)
        # The replies we would make from it are well-formed whatever else was in the query.
        parse(build_error(data, SERVFAIL, q.qend, q.opt))
    if isinstance(scanned, Drop):
        assert len(data) < 12 or data[2] & 0x80
        return
    if len(data) >= 12:
        # Every error reply, including for a query we could not read, is a valid message.
        assert scanned is None or isinstance(scanned, DnsError)
        rcode = scanned.rcode if scanned is not None else SERVFAIL
        reply = parse(build_error(data, rcode, 0))
        assert reply.id == struct.unpack_from("!H", data)[0]
        assert reply.rcode() == rcode
        assert reply.opcode() == (data[2] >> 3) & 0xF
        assert reply.flags & dns.flags.QR and not reply.flags & (dns.flags.AA | dns.flags.TC)
        assert bool(reply.flags & dns.flags.RD) == bool(data[2] & 0x01)
    msg = _dnspython_query(data)
    if scanned is None:
        # We read it, so its structure is sound: dnspython reads it too when the contents of
        # records we only skip (rdata) are not judged.
        try:
            dns.message.from_wire(data, keyring=False, continue_on_error=True)
        except Exception as err:
            raise AssertionError(f"we read it, dnspython does not: {err!r}") from err
    if msg is None or data[2] & 0xF8 or len(msg.question) != 1:
        return  # dnspython rejects it, or our documented policy does (QR, opcode, QDCOUNT)
    if _question_has_pointer(data):
        # A pointer in the question name can only point into the header (anywhere later in
        # the name would loop): FORMERR by design, though dnspython may read header bytes
        # as labels.
        assert isinstance(scanned, FormatError)
        return
    assert scanned is None, f"dnspython reads it, we raised {scanned!r}"
    event("dnspython reads it and so do we")
    rr = msg.question[0]
    assert q.qname == rr.name.canonicalize().to_wire()
    assert (q.qtype, q.qclass) == (rr.rdtype, rr.rdclass)
    assert (q.opt is None) == (msg.opt is None)
    if q.opt is not None:
        assert q.opt.payload == max(msg.payload, UDP_MIN)
        assert (q.opt.version, q.opt.do) == (msg.edns, bool(msg.ednsflags & dns.flags.DO))


# --- build_error --------------------------------------------------------------------------

error_rcodes = st.sampled_from([FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED, BADVERS])


@given(queries(servable=True), error_rcodes, st.booleans())
def test_error_reply(case: Case, rcode: int, echo: bool):
    q = scan_query(case.wire)
    if rcode > 15:
        assume(q.opt is not None)  # BADVERS exists only as an extended RCODE
    reply = parse(build_error(case.wire, rcode, q.qend if echo else 0, q.opt))
    assert reply.id == case.msg.id
    assert reply.rcode() == rcode
    if rcode in (FORMERR, NOTIMP):
        # RFC 1035 §4.1.1: opcode and RD copied; RA for QUERY; nothing else (no CD).
        want = dns.flags.QR | dns.flags.RA | (case.flags & dns.flags.RD)
    else:  # a query we understood: RD and CD copied (RFC 4035 §3.2.2)
        want = dns.flags.QR | dns.flags.RA | (case.flags & (dns.flags.RD | dns.flags.CD))
    assert reply.flags & ~0x000F == want  # never AA, TC, Z or AD
    assert reply.opcode() == 0
    if echo:
        assert len(reply.question) == 1
        assert reply.question[0].name == case.msg.question[0].name  # spelling kept
        assert question_bytes(reply) == question_bytes(case.msg)
    else:
        assert reply.question == []
    assert reply.answer == reply.authority == reply.additional == []
    if q.opt is None:
        assert reply.opt is None
    else:
        assert reply.edns == 0 and reply.payload == OUR_PAYLOAD and not reply.options
        assert bool(reply.ednsflags & dns.flags.DO) == q.opt.do
        assert reply.ednsflags & 0x7FFF == 0


# --- build_answer and truncate ------------------------------------------------------------

addresses4 = st.lists(st.binary(min_size=4, max_size=4), max_size=80, unique=True)


def _a_records(ips: list[bytes], ttl: int) -> bytes:
    return b"".join(b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, ttl, 4) + ip for ip in ips)


@given(queries(servable=True), addresses4, st.integers(0, 86400))
def test_answer_and_its_truncation(case: Case, ips: list[bytes], ttl: int):
    q = scan_query(case.wire)
    data = build_answer(case.wire, q, len(ips), _a_records(ips, ttl))
    reply = parse(data)
    assert reply.id == case.msg.id and reply.rcode() == 0
    want = dns.flags.QR | dns.flags.AA | dns.flags.RA
    assert reply.flags == want | (case.flags & (dns.flags.RD | dns.flags.CD))
    assert question_bytes(reply) == question_bytes(case.msg)
    got = [rd.address for rrset in reply.answer for rd in rrset]
    assert sorted(got) == sorted(dns.rdata.from_wire(1, 1, ip, 0, 4).address for ip in ips)
    assert all(
        rrset.name == case.msg.question[0].name and rrset.ttl == ttl for rrset in reply.answer
    )
    assert (reply.opt is None) == (q.opt is None)

    short = parse(truncate(data, q.qend, q.opt))
    assert short.id == reply.id
    assert short.flags == reply.flags | dns.flags.TC
    assert question_bytes(short) == question_bytes(case.msg)
    assert short.answer == short.authority == short.additional == []
    if q.opt is None:
        assert short.opt is None
    else:
        assert short.payload == OUR_PAYLOAD and short.edns == 0
        assert bool(short.ednsflags & dns.flags.DO) == q.opt.do


@given(queries(servable=True), st.data())
def test_truncating_an_upstream_reply(case: Case, data: st.DataObject):
    """The forwarder truncates relayed replies too: any upstream reply to the question."""
    q = scan_query(case.wire)
    upstream = dns.message.make_response(case.msg)
    upstream.flags = dns.flags.QR | (data.draw(u16) & 0x07FF)  # any flags but the opcode
    for section in (upstream.answer, upstream.authority):
        section.extend(data.draw(st.lists(records(case.msg.question[0].name), max_size=3)))
    wire = upstream.to_wire(max_size=65535)
    short = parse(truncate(wire, q.qend, q.opt))
    assert short.flags == (upstream.flags | dns.flags.TC) & ~0x000F | (wire[3] & 0x0F)
    assert question_bytes(short) == question_bytes(case.msg)
    assert short.answer == short.authority == []
    assert (short.opt is None) == (q.opt is None)


# --- build_upstream_query and reply_matches -----------------------------------------------


@given(queries(servable=True), u16)
def test_upstream_query(case: Case, qid: int):
    q = scan_query(case.wire)
    up = parse(build_upstream_query(case.wire, q, qid))
    assert up.id == qid
    assert up.flags == case.flags  # every header bit the client set goes upstream as it was
    assert question_bytes(up) == question_bytes(case.msg)  # the client's spelling
    assert up.answer == up.authority == []  # other records are not forwarded
    if case.opt is None:
        assert up.opt is None and up.additional == []
        return
    assert up.additional == []
    assert up.payload == OUR_PAYLOAD and up.edns == 0
    assert up.ednsflags & 0xFFFF == (dns.flags.DO if q.opt.do else 0)
    kept = [(c, d) for c, d in case.opt.options if c not in HOP_BY_HOP_OPTIONS]
    assert [(int(o.otype), o.to_wire()) for o in up.options] == kept


@given(garbage.filter(lambda d: len(d) >= 12), u16)
def test_upstream_query_from_garbage(data: bytes, qid: int):
    """Whatever scans, rewrites to a well-formed query or raises FormatError (bad options)."""
    try:
        q = scan_query(data)
    except (Drop, DnsError):
        return
    try:
        wire = build_upstream_query(data, q, qid)
    except FormatError:
        assert q.opt is not None and q.opt.options
        return
    # Options we do not forward were checked for framing only; the ones kept may be any data.
    up = dns.message.from_wire(wire, continue_on_error=True)
    assert up.id == qid
    assert question_bytes(up) == data[12 : q.qend]


@given(queries(servable=True), u16, st.data())
def test_reply_matches(case: Case, qid: int, data: st.DataObject):
    q = scan_query(case.wire)
    question = q.qname + case.wire[q.qend - 4 : q.qend]
    sent = parse(build_upstream_query(case.wire, q, qid))
    reply = dns.message.make_response(sent)
    # A server may answer in another case (RFC 4343): flip the case of some letters.
    name = reply.question[0].name
    flips = data.draw(
        st.lists(st.booleans(), min_size=len(name.to_wire()), max_size=len(name.to_wire()))
    )
    raw = bytes(
        b ^ 0x20 if flip and chr(b).isalpha() and b < 128 else b
        for b, flip in zip(name.to_wire(), flips, strict=True)
    )
    # (Only letter bytes flip: a length byte is never a letter, 1..63 < 'A'.)
    wire = reply.to_wire()
    wire = wire[:12] + raw + wire[12 + len(raw) :]
    assert reply_matches(wire, qid, question)
    assert not reply_matches(wire, qid ^ data.draw(st.integers(1, 0xFFFF)), question)
    assert not reply_matches(wire[:2] + bytes((wire[2] & 0x7F,)) + wire[3:], qid, question)
    other_type = (q.qtype ^ data.draw(st.integers(1, 0xFFFF))).to_bytes(2, "big")
    end = 12 + len(question)
    assert not reply_matches(wire[: end - 4] + other_type + wire[end - 2 :], qid, question)


@given(any_name)
def test_decode_name_is_dnspythons_presentation_form(name: dns.name.Name):
    """Any bytes a client puts in a name come out escaped exactly as dnspython writes them."""
    text = decode_name(name.to_wire())
    assert text == name.to_text()
    assert text.isascii() and text.isprintable() and " " not in text
    assert dns.name.from_text(text) == name  # and it reads back as the same name


def _name_of_length(n: int) -> bytes:
    """An uncompressed wire name of exactly n bytes (n >= 3), labels of 'a' up to 63."""
    out, rem = b"", n - 1
    while rem:
        take = min(64, rem)
        if rem - take == 1:
            take -= 1
        out += bytes((take - 1,)) + b"a" * (take - 1)
        rem -= take
    return out + b"\x00"


RR_A = struct.pack("!HHIH", 1, 1, 60, 4) + b"\x0a\x00\x00\x01"


@given(queries(servable=True), st.integers(240, 270), st.sampled_from(["an", "ns", "ar"]))
def test_record_owner_name_length_limit(case: Case, n: int, section: str):
    """A record's owner of more than 255 bytes is FORMERR (RFC 1035 §2.3.4), as in dnspython."""
    q = scan_query(case.wire)
    counts = {"an": (1, 0, 0), "ns": (0, 1, 0), "ar": (0, 0, 1)}[section]
    data = case.wire[:4] + struct.pack("!4H", 1, *counts) + case.wire[12 : q.qend]
    data += _name_of_length(n) + RR_A
    assert len(_name_of_length(n)) == n
    ours = _outcome(data)
    theirs = _dnspython_query(data)
    if n <= 255:
        assert ours is None and theirs is not None
    else:
        assert isinstance(ours, FormatError) and theirs is None


@given(queries(servable=True), st.data())
def test_record_name_pointers_must_point_backwards(case: Case, data: st.DataObject):
    """A compression pointer must point to a prior occurrence (RFC 1035 §4.1.4): one that
    points at itself or forwards is FORMERR, as dnspython has it."""
    q = scan_query(case.wire)
    head = case.wire[:4] + struct.pack("!4H", 1, 1, 0, 0) + case.wire[12 : q.qend]
    start = len(head)
    target = data.draw(st.sampled_from([12, start - 1, start, start + 1]) | st.integers(0, 0x3FFF))
    wire = head + bytes((0xC0 | target >> 8, target & 0xFF)) + RR_A
    ours = _outcome(wire)
    if target >= start:
        assert isinstance(ours, FormatError)
        assert _dnspython_query(wire) is None
    else:
        assert ours is None
    if target == 12:  # the question's name: dnspython reads the record as owned by it
        msg = _dnspython_query(wire)
        assert msg is not None and msg.answer[0].name == case.msg.question[0].name


def _outcome(data: bytes) -> Exception | None:
    try:
        scan_query(data)
    except (Drop, DnsError) as err:
        return err
    return None

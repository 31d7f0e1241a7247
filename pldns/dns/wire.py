"""DNS messages as bytes: scan a query, build replies, truncate, rewrite for upstream.

Sans-IO and allocation-light: this is the hot path. A query is scanned (header, question,
and the OPT record if any) without building objects for the records; replies are built by
concatenating the client's own question bytes with prebuilt sections, so the client's
spelling of the name is echoed (RFC 4343 §4.1) and nothing is re-encoded.
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

from pldns.dns.rcode import Drop, FormatError, NotImplementedOpcode

TYPE_A: Final = 1
TYPE_NS: Final = 2
TYPE_CNAME: Final = 5
TYPE_SOA: Final = 6
TYPE_PTR: Final = 12
TYPE_AAAA: Final = 28
TYPE_OPT: Final = 41
TYPE_RRSIG: Final = 46
TYPE_IXFR: Final = 251
TYPE_AXFR: Final = 252
TYPE_ANY: Final = 255
CLASS_IN: Final = 1
CLASS_ANY: Final = 255  # as a QCLASS: "*", any class (RFC 1035 §3.2.5)

HEADER_LEN: Final = 12
MAX_NAME: Final = 255  # RFC 1035 §2.3.4, wire length including the root label
MAX_LABEL: Final = 63
UDP_MIN: Final = 512  # RFC 1035 §4.2.1; also the floor for an EDNS payload size (RFC 6891 §6.2.5)
OUR_PAYLOAD: Final = 1232  # DNS flag day 2020: what we advertise, to clients and upstreams
TCP_MAX: Final = 65535

# EDNS options that belong to one hop and must not be forwarded (RFC 7873 cookies §5.1,
# RFC 7828 edns-tcp-keepalive §3.2, RFC 7830 padding §3).
HOP_BY_HOP_OPTIONS: Final = frozenset({10, 11, 12})

_HEADER: Final = struct.Struct("!HHHHHH")
_RR_FIXED: Final = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_COUNTS_1000: Final = b"\x00\x01\x00\x00\x00\x00\x00\x00"
_COUNTS_1001: Final = b"\x00\x01\x00\x00\x00\x00\x00\x01"


class Opt(NamedTuple):
    """The client's OPT record (RFC 6891 §6.1.2), as far as a proxy needs it."""

    payload: int  # the client's UDP payload size, floored at 512
    version: int
    do: bool
    options: bytes  # raw RDATA: a sequence of (code, length, data)


class Query(NamedTuple):
    """What the hot path knows about a query after scanning it."""

    qname: bytes  # wire-format name, lower-cased: the table key
    qtype: int
    qclass: int
    qend: int  # offset just past QTYPE/QCLASS: data[12:qend] is the question
    opt: Opt | None


def scan_query(data: bytes) -> Query:
    """Scan a query's header, question and additional OPT; raise on anything not servable.

    Raises Drop (no reply: a runt or a response, RFC 1035 §4.1.1 QR=1), NotImplementedOpcode
    (opcode other than QUERY), FormatError (QDCOUNT != 1, a bad name, a truncated record, a
    second OPT, an OPT that is not in the additional section or not owned by the root).
    """
    n = len(data)
    if n < HEADER_LEN:
        raise Drop("runt")
    flags = data[2]
    if flags & 0x80:
        raise Drop("response")
    if flags & 0x78:  # opcode bits
        raise NotImplementedOpcode("opcode")
    if data[4] != 0 or data[5] != 1:
        raise FormatError("qdcount")
    # The question name: labels only. A compression pointer here could only point at the
    # header (RFC 1035 §4.1.4 allows prior occurrences only), so it is malformed.
    i = HEADER_LEN
    while True:
        if i >= n:
            raise FormatError("truncated question")
        ln = data[i]
        if ln == 0:
            break
        if ln > MAX_LABEL:
            raise FormatError("label type in question")
        i += ln + 1
    i += 1
    if i - HEADER_LEN > MAX_NAME:
        raise FormatError("name too long")
    qend = i + 4
    if qend > n:
        raise FormatError("truncated question")
    qname = data[HEADER_LEN:i].lower()  # length bytes are <= 63, below 'A': lower() is safe
    qtype = (data[i] << 8) | data[i + 1]
    qclass = (data[i + 2] << 8) | data[i + 3]
    if n == qend and data[6:12] == b"\x00\x00\x00\x00\x00\x00":
        return Query(qname, qtype, qclass, qend, None)
    return Query(qname, qtype, qclass, qend, _scan_records(data, qend))


def _scan_records(data: bytes, pos: int) -> Opt | None:
    """Walk the answer, authority and additional records after the question; find the OPT."""
    _, _, _, an, ns, ar = _HEADER.unpack_from(data)
    n = len(data)
    opt: Opt | None = None
    for index in range(an + ns + ar):
        start = pos
        pos = skip_name(data, pos)
        if pos + 10 > n:
            raise FormatError("truncated record")
        rtype, rclass, ttl, rdlen = _RR_FIXED.unpack_from(data, pos)
        pos += 10 + rdlen
        if pos > n:
            raise FormatError("truncated rdata")
        if rtype == TYPE_OPT:
            # RFC 6891 §6.1.1: one OPT, in the additional section, owned by the root.
            if opt is not None or index < an + ns or data[start] != 0:
                raise FormatError("bad OPT")
            opt = Opt(
                max(rclass, UDP_MIN),
                (ttl >> 16) & 0xFF,
                bool(ttl & 0x8000),
                data[pos - rdlen : pos],
            )
    if pos != n:
        raise FormatError("trailing bytes")
    return opt


def skip_name(data: bytes, pos: int) -> int:
    """Return the offset after a (possibly compressed) name; pointers must point backwards."""
    n = len(data)
    start = pos
    length = 0
    while True:
        if pos >= n:
            raise FormatError("truncated name")
        ln = data[pos]
        if ln == 0:
            return pos + 1
        if ln & 0xC0 == 0xC0:
            if pos + 2 > n or ((ln & 0x3F) << 8 | data[pos + 1]) >= start:
                raise FormatError("bad compression pointer")
            return pos + 2
        if ln > MAX_LABEL:
            raise FormatError("bad label type")
        length += ln + 1
        if length >= MAX_NAME:  # the root label still follows: wire length is length + 1
            raise FormatError("name too long")
        pos += ln + 1


def udp_limit(q: Query) -> int:
    """The largest UDP reply the client accepts (RFC 6891 §6.2.5; 512 without EDNS)."""
    return q.opt.payload if q.opt is not None else UDP_MIN


def reply_flags(data: bytes, rcode: int = 0, aa: bool = False) -> bytes:
    """Header flags of our reply: QR, the query's opcode and RD, RA, the query's CD.

    AD is never set on what we make up (RFC 4035 §3.2.3, RFC 6840 §5.8).
    """
    b2 = 0x80 | (data[2] & 0x79) | (0x04 if aa else 0)
    b3 = 0x80 | (data[3] & 0x10) | (rcode & 0x0F)
    return bytes((b2, b3))


def opt_record(do: bool, ext_rcode: int = 0, options: bytes = b"") -> bytes:
    """Our OPT RR: root owner, our payload size, version 0, DO copied (RFC 3225 §3)."""
    return (
        b"\x00\x00\x29"
        + OUR_PAYLOAD.to_bytes(2, "big")
        + bytes((ext_rcode, 0, 0x80 if do else 0, 0))
        + len(options).to_bytes(2, "big")
        + options
    )


OPT_PLAIN: Final = opt_record(False)
OPT_DO: Final = opt_record(True)


def error_flags(data: bytes, rcode: int) -> bytes:
    """Header flags of our FORMERR/NOTIMP: only what RFC 1035 §4.1.1 says a response copies.

    Copied: the opcode and RD ("copied into the response"). Set: QR, and RA only when the
    opcode is QUERY, where recursion availability means something (RFC 1035 §4.1.1; RFC 6895
    §2.2 defines the other bits per opcode). Not copied: CD (RFC 4035 §3.2.2 copies it into
    answers to queries a server understood; a message we reject was not one), TC, AA, AD, Z.
    """
    b2 = 0x80 | (data[2] & 0x79)
    b3 = (0x80 if data[2] & 0x78 == 0 else 0) | (rcode & 0x0F)
    return bytes((b2, b3))


_BARE_ERRORS: Final = frozenset({1, 4})  # FORMERR, NOTIMP: see error_flags


def build_error(data: bytes, rcode: int, qend: int = 0, opt: Opt | None = None) -> bytes:
    """An error reply: the question echoed when it parsed (qend > 0), OPT when the query had one.

    RCODEs above 15 (BADVERS) go in the OPT's extended RCODE (RFC 6891 §6.1.3). FORMERR and
    NOTIMP copy only what RFC 1035 says (`error_flags`); the others (REFUSED, SERVFAIL,
    BADVERS) answer a query we understood and carry the usual flags (`reply_flags`).
    """
    bare = rcode in _BARE_ERRORS
    flags = error_flags(data, rcode) if bare else reply_flags(data, rcode & 0x0F)
    ar = 0 if opt is None else 1
    qd = 1 if qend else 0
    head = data[:2] + flags + bytes((0, qd, 0, 0, 0, 0, 0, ar))
    tail = b"" if opt is None else opt_record(opt.do, rcode >> 4)
    return head + (data[HEADER_LEN:qend] if qend else b"") + tail


def build_answer(
    data: bytes,
    q: Query,
    ancount: int,
    answer: bytes,
    nscount: int = 0,
    authority: bytes = b"",
    aa: bool = True,
) -> bytes:
    """A NOERROR reply from prebuilt sections (names point at offset 12), AA unless told."""
    if q.opt is None:
        ar, tail = 0, b""
    else:
        ar, tail = 1, (OPT_DO if q.opt.do else OPT_PLAIN)
    return (
        data[:2]
        + reply_flags(data, 0, aa=aa)
        + bytes((0, 1, ancount >> 8, ancount & 0xFF, 0, nscount, 0, ar))
        + data[HEADER_LEN : q.qend]
        + answer
        + authority
        + tail
    )


def truncate(reply: bytes, qend: int, opt: Opt | None) -> bytes:
    """Header and question only, TC=1, our OPT kept when the client sent one (RFC 6891 §7)."""
    b2 = reply[2] | 0x02
    ar = 0 if opt is None else 1
    tail = b"" if opt is None else opt_record(opt.do, 0)
    head = reply[:2] + bytes((b2, reply[3], 0, 1, 0, 0, 0, 0, 0, ar))
    return head + reply[HEADER_LEN:qend] + tail


def build_upstream_query(data: bytes, q: Query, qid: int) -> bytes:
    """The query we send upstream: a fresh ID, the question, and our own OPT.

    Our payload size replaces the client's (RFC 6891 §6.2.5 lets a forwarder advertise its
    own), DO and CD are kept, hop-by-hop options are dropped. Other records in a query (there
    should be none) are not forwarded.
    """
    head = qid.to_bytes(2, "big") + data[2:4]
    if q.opt is None:
        if len(data) == q.qend:
            return head + data[4:]
        return head + _COUNTS_1000 + data[HEADER_LEN : q.qend]
    options = strip_hop_by_hop(q.opt.options)
    return head + _COUNTS_1001 + data[HEADER_LEN : q.qend] + opt_record(q.opt.do, 0, options)


def strip_hop_by_hop(options: bytes) -> bytes:
    """Drop cookie, keepalive and padding options; FORMERR if the option list is malformed."""
    if not options:
        return options
    out = []
    pos, n = 0, len(options)
    while pos < n:
        if pos + 4 > n:
            raise FormatError("truncated EDNS option")
        code = (options[pos] << 8) | options[pos + 1]
        end = pos + 4 + ((options[pos + 2] << 8) | options[pos + 3])
        if end > n:
            raise FormatError("truncated EDNS option")
        if code not in HOP_BY_HOP_OPTIONS:
            out.append(options[pos:end])
        pos = end
    return b"".join(out)


def reply_matches(reply: bytes, qid: int, question: bytes) -> bool:
    """An upstream reply is ours only if it is a response with our ID and our question.

    `question` is the question we sent with its name lower-cased; the name is compared
    case-insensitively (a server may answer in other case, RFC 4343), type and class exactly.
    """
    n = len(question)
    return (
        len(reply) >= HEADER_LEN + n
        and reply[0] == qid >> 8
        and reply[1] == qid & 0xFF
        and reply[2] & 0x80 != 0
        and reply[4] == 0
        and reply[5] == 1
        and reply[HEADER_LEN : HEADER_LEN + n - 4].lower() == question[:-4]
        and reply[HEADER_LEN + n - 4 : HEADER_LEN + n] == question[-4:]
    )


def encode_name(name: str) -> bytes:
    """Presentation name -> wire format (for building tables and tests, not the hot path)."""
    out = bytearray()
    for label in name.rstrip(".").split("."):
        raw = label.encode("ascii")
        if not raw or len(raw) > MAX_LABEL:
            raise ValueError(f"bad label in {name!r}")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > MAX_NAME:
        raise ValueError(f"name too long: {name!r}")
    return bytes(out)


# Bytes printed as themselves in a label; the specials among them get a backslash, and every
# other byte becomes \DDD (RFC 1035 §5.1 master-file escapes, as dnspython's to_text does).
_SPECIAL: Final = frozenset(b'"().;\\@$')
_LABEL_CHARS: Final = [
    ("\\" + chr(c) if c in _SPECIAL else chr(c)) if 0x20 < c < 0x7F else f"\\{c:03d}"
    for c in range(256)
]


def label_to_text(label: bytes) -> str:
    """One label in presentation form, escaped: a client chooses these bytes."""
    chars = _LABEL_CHARS
    return "".join([chars[c] for c in label])


def decode_name(wire: bytes) -> str:
    """Wire name (no compression) -> escaped presentation form, for logs and status.

    A label holding a dot, a backslash, a space, a control byte or a non-ASCII byte comes
    out as `\\.`, `\\\\`, `\\032`, `\\000`, `\\200`: nothing a client sends can forge a
    log field or reach a terminal as a control sequence.
    """
    labels = []
    i = 0
    n = len(wire)
    while i < n and wire[i]:
        ln = wire[i]
        labels.append(label_to_text(wire[i + 1 : i + 1 + ln]))
        i += ln + 1
    return ".".join(labels) + "."


def escape_text(name: str) -> str:
    """A name read back from a document (JSON, a remote /status) made safe to print.

    Text that `decode_name` wrote is unchanged; any other byte outside printable ASCII (a
    space, a control byte, an escape sequence, non-ASCII) becomes \\DDD of its UTF-8 bytes.
    """
    if name.isascii() and name.isprintable() and " " not in name:
        return name
    return "".join(
        ch if "!" <= ch <= "~" else "".join(f"\\{b:03d}" for b in ch.encode("utf-8", "replace"))
        for ch in name
    )

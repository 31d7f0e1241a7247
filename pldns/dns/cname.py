"""CNAME chains into owned names: a forwarded answer must not lead around the endpoint.

A public name may be a CNAME to an API name pldns owns (`api.corp.example CNAME
eci-vpc.cn-hangzhou.aliyuncs.com`). The upstream resolves the chain to its end and answers
with the public 100.64 addresses there. pldns keeps the chain up to the first owned name and
replaces what follows with its own answer for that name (A/AAAA, or NODATA with the owned
name's SOA), exactly what a query for the owned name itself would get.

Cost: the pipeline checks every forwarded reply with one `bytes.find` for the four bytes of
TYPE CNAME + CLASS IN after the question (`may_chain`, inlined there: ~0.1 µs against ~60 µs
for forwarding a query); an ordinary reply has none and pays nothing more.
Only a reply that has them is parsed fully here (stdlib only: the data plane imports no DNS
library), with bounds on every read and compression pointers only backwards.

Left alone (relayed as the upstream sent it):
- a chain that reaches no owned name, or a reply that does not parse, or is truncated, or has
  an RCODE other than NOERROR/NXDOMAIN;
- a DNSSEC-signed answer (AD set, or an RRSIG anywhere in the reply): a validating client
  would reject the rewritten data; counted as `signed`;
- a chain that loops or is longer than MAX_CHAIN links (RFC 1034 §5.2.2: alias loops are
  the resolver's error to report, and resolvers cap chain length); counted as `loop`;
- a CNAME or zone-transfer query (the client asked for the alias itself);
- an owned name without addresses under `when_unknown: forward` (the public answer is what the
  name itself would get; under `servfail` the client gets SERVFAIL, as for the name itself).
"""

from __future__ import annotations

from typing import Final, NamedTuple

from pldns.dns.answer import WHEN_UNKNOWN_FORWARD, Resolver
from pldns.dns.rcode import SERVFAIL, FormatError
from pldns.dns.stats import Stats
from pldns.dns.table import OwnedName, RecordTable, soa_record
from pldns.dns.wire import (
    CLASS_IN,
    HEADER_LEN,
    MAX_LABEL,
    MAX_NAME,
    OPT_DO,
    OPT_PLAIN,
    TYPE_A,
    TYPE_AAAA,
    TYPE_ANY,
    TYPE_AXFR,
    TYPE_CNAME,
    TYPE_IXFR,
    TYPE_PTR,
    TYPE_RRSIG,
    TYPE_SOA,
    Query,
    build_error,
)

MAX_CHAIN: Final = 16  # CNAME links followed before the chain counts as a loop

# What happened to a reply that reached `rewrite` (the values of the metric's label).
REWRITTEN: Final = "rewritten"
SIGNED: Final = "signed"
LOOP: Final = "loop"
OUTCOMES: Final = (REWRITTEN, SIGNED, LOOP)

CNAME_IN: Final = b"\x00\x05\x00\x01"  # TYPE CNAME, CLASS IN: what an answer's CNAME record holds
_SKIP_QTYPES: Final = frozenset({TYPE_CNAME, TYPE_AXFR, TYPE_IXFR})
_A_SIZE: Final = 16  # a prebuilt A record: pointer, type, class, ttl, rdlength, 4 bytes
_AAAA_SIZE: Final = 28


def may_chain(reply: bytes, qend: int) -> bool:
    """The hot-path pre-check: could this reply hold a CNAME record after its question?"""
    return reply.find(CNAME_IN, qend) >= 0


class Record(NamedTuple):
    owner: bytes  # lower-cased, uncompressed wire name
    rtype: int
    rclass: int
    ttl: int
    rdata: int  # offset of the RDATA in the message


def read_name(data: bytes, pos: int) -> tuple[bytes, int]:
    """The name at `pos`, decompressed (original case), and the offset just after it.

    Each pointer must point before the labels that led to it (RFC 1035 §4.1.4: a prior
    occurrence), so reading always ends; labels <= 63 bytes, names <= 255.
    """
    n = len(data)
    out = bytearray()
    end = -1
    floor = pos
    while True:
        if pos >= n:
            raise FormatError("truncated name")
        ln = data[pos]
        if ln == 0:
            out.append(0)
            return bytes(out), (pos + 1 if end < 0 else end)
        if ln & 0xC0 == 0xC0:
            if pos + 1 >= n:
                raise FormatError("truncated pointer")
            target = ((ln & 0x3F) << 8) | data[pos + 1]
            if target >= floor:
                raise FormatError("bad compression pointer")
            if end < 0:
                end = pos + 2
            pos = floor = target
            continue
        if ln > MAX_LABEL or pos + 1 + ln > n:
            raise FormatError("bad label")
        out += data[pos : pos + 1 + ln]
        if len(out) + 1 > MAX_NAME:
            raise FormatError("name too long")
        pos += 1 + ln


def read_records(reply: bytes, qend: int) -> tuple[list[Record], bool]:
    """The answer records, and whether an RRSIG appears in any section."""
    an = (reply[6] << 8) | reply[7]
    total = an + ((reply[8] << 8) | reply[9]) + ((reply[10] << 8) | reply[11])
    n = len(reply)
    pos = qend
    answers: list[Record] = []
    signed = False
    for index in range(total):
        owner, pos = read_name(reply, pos)
        if pos + 10 > n:
            raise FormatError("truncated record")
        rtype = (reply[pos] << 8) | reply[pos + 1]
        rclass = (reply[pos + 2] << 8) | reply[pos + 3]
        ttl = int.from_bytes(reply[pos + 4 : pos + 8], "big")
        rdlen = (reply[pos + 8] << 8) | reply[pos + 9]
        rdata = pos + 10
        pos = rdata + rdlen
        if pos > n:
            raise FormatError("truncated rdata")
        if rtype == TYPE_RRSIG:
            signed = True
        if index < an:
            answers.append(Record(owner.lower(), rtype, rclass, ttl, rdata))
    return answers, signed


class ChainRewriter:
    """Rewrites forwarded replies whose CNAME chain reaches an owned name (see the module)."""

    def __init__(self, resolver: Resolver, stats: Stats) -> None:
        self.resolver = resolver  # its table (swapped by the sync), policy and rotation
        self.stats = stats

    def rewrite(self, q: Query, reply: bytes) -> bytes:
        """`reply` itself, or the rewritten one: same ID and question (the caller puts the
        client's ID and spelling in, as for any forwarded reply), and an OPT when `q` had one.

        Takes no client bytes, so the cache can store what it returns for every client whose
        query has the same key (name, type, class, RD, CD, EDNS, DO).
        """
        if q.qtype in _SKIP_QTYPES or reply[4:6] != b"\x00\x01" or reply[2] & 0x02:
            return reply
        if reply[3] & 0x0F not in (0, 3):  # NOERROR, NXDOMAIN
            return reply
        try:
            answers, signed = read_records(reply, q.qend)
        except FormatError:
            return reply  # not ours to judge: relayed as before
        table = self.resolver.table
        cnames = {r.owner: r for r in answers if r.rtype == TYPE_CNAME and r.rclass == CLASS_IN}
        name = q.qname
        seen = {name}
        chain: list[tuple[Record, bytes]] = []  # (CNAME record, its target as written)
        owned = table.names.get(name)
        while owned is None:
            record = cnames.get(name)
            if record is None:
                return reply  # the chain ends before any owned name
            target, _ = read_name(reply, record.rdata)
            name = target.lower()
            if name in seen or len(chain) == MAX_CHAIN:
                self.stats.chains[LOOP] += 1
                return reply
            seen.add(name)
            chain.append((record, target))
            owned = table.names.get(name)
        if signed or reply[3] & 0x20:
            self.stats.chains[SIGNED] += 1
            return reply
        if not owned.known:
            if self.resolver.when_unknown == WHEN_UNKNOWN_FORWARD:
                return reply
            self.stats.chains[REWRITTEN] += 1
            return build_error(reply, SERVFAIL, q.qend, q.opt)  # the reply's ID, flags, question
        self.stats.chains[REWRITTEN] += 1
        return self._build(q, reply, chain, owned, table)

    def _build(
        self,
        q: Query,
        reply: bytes,
        chain: list[tuple[Record, bytes]],
        owned: OwnedName,
        table: RecordTable,
    ) -> bytes:
        """The question, the chain (owners as pointers), the owned answer, our OPT."""
        ttl_cap = table.ttl
        parts = [reply[HEADER_LEN : q.qend]]
        at = q.qend
        owner = b"\xc0\x0c"  # the first link is owned by the question name
        for record, target in chain:
            ttl = min(record.ttl, ttl_cap)
            parts.append(
                owner + CNAME_IN + ttl.to_bytes(4, "big") + len(target).to_bytes(2, "big") + target
            )
            owner = (0xC000 | (at + 12)).to_bytes(2, "big")  # where this target was written
            at += 12 + len(target)
        ancount, answer, nscount, authority = self._owned(owned, q.qtype, owner, table)
        parts += (answer, authority)
        ar = 0
        if q.opt is not None:
            ar = 1
            parts.append(OPT_DO if q.opt.do else OPT_PLAIN)
        ancount += len(chain)
        # Flags: QR, RD and CD as the upstream relayed them (copied from the client's query),
        # RA from the upstream; AA clear (the chain is not ours), AD clear (never on data we
        # made up, RFC 4035 §3.2.3), TC clear, NOERROR (the owned name exists).
        head = (
            reply[:2]
            + bytes((0x80 | (reply[2] & 0x01), reply[3] & 0x90))
            + bytes((0, 1, ancount >> 8, ancount & 0xFF, 0, nscount, 0, ar))
        )
        return head + b"".join(parts)

    def _owned(
        self, owned: OwnedName, qtype: int, owner: bytes, table: RecordTable
    ) -> tuple[int, bytes, int, bytes]:
        """What a query for the owned name gets (as answer.Resolver), owned by `owner`."""
        if qtype == TYPE_ANY:  # one RRset, as for the owned name itself (RFC 8482 §4.2)
            qtype = (
                TYPE_A
                if owned.a_count
                else TYPE_AAAA
                if owned.aaaa_count
                else TYPE_PTR
                if owned.ptr
                else qtype
            )
        if qtype == TYPE_A and owned.a_count:
            rotation = owned.a[self.resolver.turn() % len(owned.a)]
            return owned.a_count, _repoint(rotation, _A_SIZE, owner), 0, b""
        if qtype == TYPE_AAAA and owned.aaaa_count:
            rotation = owned.aaaa[self.resolver.turn() % len(owned.aaaa)]
            return owned.aaaa_count, _repoint(rotation, _AAAA_SIZE, owner), 0, b""
        if qtype == TYPE_PTR and owned.ptr:
            return 1, owner + owned.ptr[2:], 0, b""
        soa = soa_record(table.ttl, table.serial, owner)
        if qtype == TYPE_SOA:
            return 1, soa, 0, b""
        return 0, b"", 1, soa  # NODATA after the chain: the owned name's SOA (RFC 2308 §2.2)


def _repoint(section: bytes, size: int, owner: bytes) -> bytes:
    """Prebuilt fixed-size records owned by the question name, re-owned by `owner`."""
    return b"".join(owner + section[i + 2 : i + size] for i in range(0, len(section), size))

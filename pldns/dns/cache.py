"""The packet cache: upstream replies kept as bytes, keyed on the question (sans-IO).

dnsdist's design: the key is the question as the client sent it, normalised (name lower-cased,
type, class, and the header/EDNS bits that change the answer: RD, CD, DO, whether there was
an OPT); the value is the upstream's reply bytes plus the offset of every TTL field, found
once when the reply is stored. A hit copies the stored bytes, puts in the client's ID and the
client's spelling of the question (0x20, RFC 4343 §4.1), and writes each TTL as the time left
with struct.pack_into at the stored offsets: no parse of the reply on the hot path.

What is stored and for how long (all in whole seconds; `now` comes from the caller's clock):

- NOERROR with an answer: the smallest TTL in the reply (answer RRsets, and the authority and
  additional records too, so no record is ever shown past its own TTL), capped by max_ttl.
- NXDOMAIN, and NOERROR without an answer (NODATA): the SOA's MINIMUM bounded by the SOA's own
  TTL (RFC 2308 §5), capped by max_negative_ttl. Without an SOA: not stored (RFC 2308 §5).
- SERVFAIL: servfail_ttl seconds (RFC 2308 §7.1: at most five minutes); never served stale.
- Never: a truncated reply (RFC 2181 §9), a reply with any TTL of 0 (RFC 1035 §3.2.1: use
  once), FORMERR/NOTIMP/REFUSED or any other RCODE, a reply that does not parse.
- min_ttl raises a shorter lifetime (a TTL of 0 still means "not stored").

An entry past its lifetime is stale: kept for stale_window more seconds (RFC 8767), during
which the pipeline may answer from it, with every TTL set to stale_ttl, when the upstreams
fail. Memory is bounded by `size` entries (CLOCK eviction: an entry not hit since the clock
hand last passed goes first), and each entry is kept to a few hundred bytes (see Entry).
"""

from __future__ import annotations

import struct
from collections.abc import Collection
from typing import Final

from pldns.dns.cname import CNAME_IN
from pldns.dns.rcode import DnsError
from pldns.dns.settings import Cache
from pldns.dns.tally import Tally
from pldns.dns.wire import HEADER_LEN, TYPE_ANY, TYPE_OPT, TYPE_SOA, Query, skip_name
from pldns.dns.wire import strip_hop_by_hop as _strip

KIND_SUCCESS: Final = "success"
KIND_DENIAL: Final = "denial"
KIND_SERVFAIL: Final = "servfail"
KINDS: Final = (KIND_SUCCESS, KIND_DENIAL, KIND_SERVFAIL)  # the trailer stores the index
_SERVFAIL: Final = 2

NOERROR, SERVFAIL_RCODE, NXDOMAIN = 0, 2, 3
MAX_TTL_VALUE: Final = 0x7FFFFFFF  # RFC 2181 §8: a TTL with the top bit set is treated as 0
PREFETCH_FRACTION: Final = 0.1  # refresh a popular entry in the last 10 % of its lifetime

_HEADER: Final = struct.Struct("!HHHHHH")
_RR_FIXED: Final = struct.Struct("!HHIH")
_TTL: Final = struct.Struct("!I")
_META: Final = struct.Struct("!HI")  # (offset of a TTL field, the TTL shown at age 0)
_TRAILER: Final = struct.Struct("!dIIB")  # expires, lifetime, age of the TTLs written, kind index
_TRAILER_SIZE: Final = _TRAILER.size
_BITS: Final = tuple(bytes((b,)) for b in range(16))
_RD, _CD, _EDNS, _DO = 0x01, 0x02, 0x04, 0x08
KEY_TAIL: Final = 5  # the key is qname + type + class + one byte of bits


def cache_key(data: bytes, q: Query) -> bytes | None:
    """The key of a scanned query, or None when its answer must not be shared.

    A query carrying EDNS options other than the hop-by-hop ones (a client subnet, say) may
    get an answer made for it alone: not cached.
    """
    bits = (data[2] & 0x01) | ((data[3] & 0x10) >> 3)  # RD, CD (RFC 4035 §3.2.2)
    opt = q.opt
    if opt is not None:
        if opt.options:
            try:
                if _strip(opt.options):
                    return None
            except DnsError:
                return None
        bits |= _EDNS | (_DO if opt.do else 0)
    qend = q.qend
    return q.qname + data[qend - 4 : qend] + _BITS[bits]


def key_name(key: bytes) -> bytes:
    """The lower-cased wire name a key was made from."""
    return key[:-KEY_TAIL]


class Entry:
    """One stored reply, kept small (about 250 bytes with its key for a one-record answer).

    `blob` holds, in one bytes object: the reply without its question (the client's question
    goes back in on a hit; bytes 0-1, the ID's place, hold the length of this part), the TTL
    field offsets with the TTL shown at age 0 (6 bytes each), then a trailer: expiry time,
    lifetime, the age the TTLs were last written for, and the kind. `hits` counts hits for
    prefetch and is the reference bit of the CLOCK eviction (-1: prefetched).
    """

    __slots__ = ("blob", "hits")

    def __init__(self, blob: bytes) -> None:
        self.blob = blob
        self.hits = 0

    def trailer(self) -> tuple[float, int, int, int]:
        b = self.blob
        return _TRAILER.unpack_from(b, len(b) - _TRAILER.size)  # type: ignore[return-value]

    @property
    def expires(self) -> float:
        return self.trailer()[0]

    @property
    def lifetime(self) -> int:
        return self.trailer()[1]

    @property
    def kind(self) -> str:
        return KINDS[self.trailer()[3]]


def scan_reply(
    reply: bytes, qtype: int, settings: Cache
) -> tuple[str, int, list[tuple[int, int]]] | None:
    """(kind, lifetime, [(ttl offset, ttl)]) of a reply worth storing, or None."""
    n = len(reply)
    if n < HEADER_LEN or not reply[2] & 0x80 or reply[2] & 0x02:
        return None  # not a response, or truncated (RFC 2181 §9)
    rcode = reply[3] & 0x0F
    if rcode not in (NOERROR, NXDOMAIN, SERVFAIL_RCODE):
        return None
    qd, an, ns, ar = _HEADER.unpack_from(reply)[2:]
    if qd != 1:
        return None
    try:
        pos = skip_name(reply, HEADER_LEN) + 4
        ttls: list[tuple[int, int]] = []
        soa_min = -1
        answered = False
        for index in range(an + ns + ar):
            pos = skip_name(reply, pos)
            if pos + 10 > n:
                return None
            rtype, _, ttl, rdlen = _RR_FIXED.unpack_from(reply, pos)
            rdata = pos + 10
            end = rdata + rdlen
            if end > n:
                return None
            if rtype == TYPE_OPT:
                if index < an + ns:
                    return None
            else:
                # The OPT's "TTL" is extended RCODE and flags (RFC 6891 §6.1.3): never touched.
                if ttl > MAX_TTL_VALUE:
                    ttl = 0
                ttls.append((pos + 4, ttl))
                if index < an:
                    if rtype == qtype or qtype == TYPE_ANY:
                        answered = True
                elif index < an + ns and rtype == TYPE_SOA:
                    fixed = skip_name(reply, skip_name(reply, rdata))
                    if fixed + 20 != end:
                        return None
                    minimum = _TTL.unpack_from(reply, fixed + 16)[0]
                    bound = min(ttl, minimum)  # RFC 2308 §5
                    soa_min = bound if soa_min < 0 else min(soa_min, bound)
            pos = end
    except (DnsError, struct.error, IndexError):
        return None
    if pos != n:
        return None
    shortest = min((t for _, t in ttls), default=MAX_TTL_VALUE)
    if rcode == SERVFAIL_RCODE:
        # RFC 2308 §7.1: a SERVFAIL may be cached, for no longer than five minutes.
        return (KIND_SERVFAIL, settings.servfail_ttl, ttls) if settings.servfail_ttl > 0 else None
    if rcode == NOERROR and (answered or (an > 0 and soa_min < 0)):
        kind, cap, lifetime = KIND_SUCCESS, settings.max_ttl, shortest
    elif soa_min >= 0:
        kind, cap, lifetime = KIND_DENIAL, settings.max_negative_ttl, min(shortest, soa_min)
    else:
        return None  # a negative answer without an SOA is not cached (RFC 2308 §5)
    if lifetime <= 0:
        return None  # TTL 0: use once, never store (RFC 1035 §3.2.1)
    lifetime = min(max(lifetime, settings.min_ttl), cap)
    return (kind, lifetime, ttls) if lifetime > 0 else None


class PacketCache:
    """The stored replies, at most `size`, CLOCK eviction; counters for metrics.

    Entries sit in a plain dict in insertion order. When the cache is over its size, the
    oldest entries are looked at in turn: one hit since it was last looked at moves to the
    newest end with its count reset (a second chance), one not hit goes. Lookups do not
    reorder anything.
    """

    def __init__(self, settings: Cache) -> None:
        self.settings = settings
        self.entries: dict[bytes, Entry] = {}
        self.recheck: dict[bytes, float] = {}  # key -> answer stale without asking until then
        self.kinds: Tally[str] = Tally()  # entries by kind
        self.hits: Tally[str] = Tally()
        self.stale: Tally[str] = Tally()
        self.prefetches: Tally[str] = Tally()
        self.evictions: Tally[str] = Tally()
        self.inserts: Tally[str] = Tally()
        self.misses = 0
        self.coalesced = 0
        self.flushes = 0

    def __len__(self) -> int:
        return len(self.entries)

    def configure(self, settings: Cache) -> None:
        """New limits (a reload): entries stay, down to the new size."""
        self.settings = settings
        self._trim()

    # -- looking up ------------------------------------------------------------------------

    def lookup(
        self, key: bytes, data: bytes, qend: int, now: float
    ) -> tuple[bytes | None, Entry | None]:
        """(reply, None) for a fresh entry, (reply, entry) when it is also due for a prefetch
        (popular, in the last 10 % of its life); (None, entry) for a stale entry within the
        window; (None, None) when there is nothing usable.

        The reply is `data`'s ID and question on the stored answer, each TTL the time left.
        """
        entry = self.entries.get(key)
        if entry is None:
            return None, None
        b = entry.blob
        tail = len(b) - _TRAILER_SIZE
        expires, lifetime, age_written, kind = _TRAILER.unpack_from(b, tail)
        if now >= expires:
            if kind == _SERVFAIL or now >= expires + self.settings.stale_window:  # 2: servfail
                self._remove(key, entry)
                return None, None
            return None, entry
        hits = entry.hits
        if hits >= 0:
            hits = entry.hits = hits + 1
        self.hits[KINDS[kind]] += 1
        age = int(now - expires + lifetime)
        if age != age_written:
            b = entry.blob = _age(b, age, tail, expires, lifetime, kind)
        n = (b[0] << 8) | b[1]
        reply = data[:2] + b[2:HEADER_LEN] + data[HEADER_LEN:qend] + b[HEADER_LEN:n]
        threshold = self.settings.prefetch
        if (
            0 < threshold <= hits
            and kind != _SERVFAIL
            and now >= expires - lifetime * PREFETCH_FRACTION
        ):
            return reply, entry
        return reply, None

    def answer_stale(self, entry: Entry, data: bytes, qend: int) -> bytes:
        """An expired entry as the reply to `data`, every TTL stale_ttl (RFC 8767 §4)."""
        b = entry.blob
        tail = len(b) - _TRAILER.size
        kind = b[-1]
        self.stale[KINDS[kind]] += 1
        n = (b[0] << 8) | b[1]
        body = bytearray(b[:n])
        stale_ttl = self.settings.stale_ttl
        for offset, _ in _META.iter_unpack(b[n:tail]):
            _TTL.pack_into(body, offset, stale_ttl)
        return data[:2] + bytes(body[2:HEADER_LEN]) + data[HEADER_LEN:qend] + bytes(body[12:])

    def retry_after(self, key: bytes) -> float:
        return self.recheck.get(key, 0.0)

    def failed_refresh(self, key: bytes, until: float) -> None:
        """A refresh of a stale entry failed: answer it stale, without asking, until `until`."""
        if key in self.entries:
            self.recheck[key] = until

    def wants_prefetch(self, entry: Entry, now: float) -> bool:
        """A popular fresh entry in the last 10 % of its life, not refreshed yet (once)."""
        threshold = self.settings.prefetch
        if threshold <= 0 or entry.hits < threshold:
            return False
        expires, lifetime, _, kind = entry.trailer()
        return kind != _SERVFAIL and now >= expires - lifetime * PREFETCH_FRACTION

    # -- storing -----------------------------------------------------------------------------

    def insert(self, key: bytes, reply: bytes, qtype: int, now: float) -> Entry | None:
        """Store an upstream reply if the rules allow; the new entry, or None."""
        qend = HEADER_LEN + len(key) - KEY_TAIL + 4
        # Only a reply to exactly this question (RFC 5452 §9.1; the forwarder checked too).
        if (
            len(reply) < qend
            or reply[HEADER_LEN : qend - 4].lower() != key[:-KEY_TAIL]
            or reply[qend - 4 : qend] != key[-KEY_TAIL:-1]
        ):
            return None
        scanned = scan_reply(reply, qtype, self.settings)
        if scanned is None:
            return None
        kind, lifetime, ttls = scanned
        shift = qend - HEADER_LEN  # the question is not stored
        body = bytearray(reply[:HEADER_LEN] + reply[qend:])
        if len(body) > 0xFFFF:
            return None
        body[0:2] = len(body).to_bytes(2, "big")
        # A cached answer is not authoritative: AA is for the authority itself (RFC 1035
        # §4.1.1).
        body[2] &= 0xFB
        meta = bytearray()
        for offset, ttl in ttls:
            shown = ttl if ttl < lifetime else lifetime
            _TTL.pack_into(body, offset - shift, shown)
            meta += _META.pack(offset - shift, shown)
        trailer = _TRAILER.pack(now + lifetime, lifetime, 0, KINDS.index(kind))
        entry = Entry(bytes(body + meta) + trailer)
        entries = self.entries
        old = entries.pop(key, None)
        if old is not None:
            self.kinds[old.kind] -= 1
            self.recheck.pop(key, None)
        entries[key] = entry
        self.kinds[kind] += 1
        self.inserts[kind] += 1
        if old is None:
            self._trim()
        return entry

    def _trim(self) -> None:
        entries = self.entries
        size = self.settings.size
        excess = len(entries) - size
        if excess <= 0:
            return
        # Evict a little more than needed at once: every walk starts from the dict's front,
        # over the holes earlier evictions left there.
        want = excess + size // 128
        victims: list[bytes] = []
        spared: list[bytes] = []
        for key, entry in entries.items():
            if entry.hits > 0:
                spared.append(key)
            else:
                victims.append(key)
                if len(victims) >= want:
                    break
        if len(victims) < excess:  # all were hit since last looked at: the oldest go anyway
            take = excess - len(victims)
            victims += spared[:take]
            spared = spared[take:]
        for key in spared:
            entry = entries.pop(key)
            entry.hits = 0
            entries[key] = entry
        for key in victims:
            entry = entries[key]
            self._remove(key, entry)
            self.evictions[entry.kind] += 1

    def _remove(self, key: bytes, entry: Entry) -> None:
        del self.entries[key]
        self.kinds[entry.kind] -= 1
        if self.recheck:
            self.recheck.pop(key, None)

    # -- operations --------------------------------------------------------------------------

    def flush(self) -> int:
        """Drop everything; how many entries there were."""
        count = len(self.entries)
        self.entries.clear()
        self.recheck.clear()
        self.kinds.clear()
        self.flushes += 1
        return count

    def drop_names(self, names: Collection[bytes]) -> int:
        """Drop the entries for these lower-cased wire names (names pldns now owns)."""
        if not names:
            return 0
        doomed = [k for k in self.entries if k[:-KEY_TAIL] in names]
        for key in doomed:
            self._remove(key, self.entries[key])
        return len(doomed)

    def drop_chains(self) -> int:
        """Drop the entries whose answer holds a CNAME record: its chain may end at a name
        pldns owns now (or has addresses for now), which gets the owned answer (cname.py)."""
        doomed = [k for k, e in self.entries.items() if _has_cname(e.blob)]
        for key in doomed:
            self._remove(key, self.entries[key])
        return len(doomed)


def _has_cname(blob: bytes) -> bool:
    """Does a stored body (question left out) hold TYPE CNAME + CLASS IN after its header?"""
    return blob.find(CNAME_IN, HEADER_LEN, (blob[0] << 8) | blob[1]) >= 0


def _age(blob: bytes, age: int, tail: int, expires: float, lifetime: int, kind: int) -> bytes:
    """The blob with every TTL written for `age` seconds since it was stored."""
    n = (blob[0] << 8) | blob[1]
    buf = bytearray(blob)
    pack = _TTL.pack_into
    for offset, ttl in _META.iter_unpack(blob[n:tail]):
        pack(buf, offset, ttl - age if ttl > age else 0)
    _TRAILER.pack_into(buf, tail, expires, lifetime, age, kind)
    return bytes(buf)

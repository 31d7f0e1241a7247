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
fail. Memory is bounded by `size` entries, the least recently used evicted first.
"""

from __future__ import annotations

import struct
from collections import Counter, OrderedDict
from collections.abc import Collection

from pldns.dns.rcode import DnsError
from pldns.dns.settings import Cache
from pldns.dns.wire import HEADER_LEN, TYPE_ANY, TYPE_OPT, TYPE_SOA, Query, skip_name
from pldns.dns.wire import strip_hop_by_hop as _strip

KIND_SUCCESS = "success"
KIND_DENIAL = "denial"
KIND_SERVFAIL = "servfail"
KINDS = (KIND_SUCCESS, KIND_DENIAL, KIND_SERVFAIL)

NOERROR, SERVFAIL_RCODE, NXDOMAIN = 0, 2, 3
MAX_TTL_VALUE = 0x7FFFFFFF  # RFC 2181 §8: a TTL with the top bit set is treated as 0
PREFETCH_FRACTION = 0.1  # refresh a popular entry in the last 10 % of its lifetime

_HEADER = struct.Struct("!HHHHHH")
_RR_FIXED = struct.Struct("!HHIH")
_TTL = struct.Struct("!I")
_META = struct.Struct("!HI")  # (offset of a TTL field, the TTL shown at age 0)
_BITS = tuple(bytes((b,)) for b in range(16))
_RD, _CD, _EDNS, _DO = 0x01, 0x02, 0x04, 0x08
KEY_TAIL = 5  # the key is qname + type + class + one byte of bits


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
    """One stored reply. `template` holds the TTLs as last shown (at `age` seconds)."""

    __slots__ = (
        "age", "expires", "hits", "kind", "lifetime", "meta", "prefetched", "retry_after",
        "stored", "template",
    )  # fmt: skip

    def __init__(
        self, kind: str, template: bytes, meta: bytes, stored: float, lifetime: int
    ) -> None:
        self.kind = kind
        self.template = template
        self.meta = meta
        self.stored = stored
        self.lifetime = lifetime
        self.expires = stored + lifetime
        self.age = 0
        self.hits = 0
        self.prefetched = False
        self.retry_after = 0.0  # after a failed refresh: answer stale without asking until then


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
    """The stored replies, bounded, least recently used first out; counters for metrics."""

    def __init__(self, settings: Cache) -> None:
        self.settings = settings
        self.entries: OrderedDict[bytes, Entry] = OrderedDict()
        self.kinds: Counter[str] = Counter()  # entries by kind
        self.hits: Counter[str] = Counter()
        self.stale: Counter[str] = Counter()
        self.prefetches: Counter[str] = Counter()
        self.evictions: Counter[str] = Counter()
        self.inserts: Counter[str] = Counter()
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

    def get(self, key: bytes, now: float) -> Entry | None:
        """The entry for `key`, fresh (now < expires) or stale within the window; else None."""
        entry = self.entries.get(key)
        if entry is None:
            return None
        if now >= entry.expires and (
            entry.kind == KIND_SERVFAIL or now >= entry.expires + self.settings.stale_window
        ):
            self._remove(key, entry)
            return None
        self.entries.move_to_end(key)
        return entry

    def answer(self, entry: Entry, data: bytes, qend: int, now: float) -> bytes:
        """A fresh entry as the reply to `data`: its ID and spelling, TTLs counted down."""
        entry.hits += 1
        self.hits[entry.kind] += 1
        age = int(now - entry.stored)
        if age != entry.age:
            buf = bytearray(entry.template)
            pack = _TTL.pack_into
            for offset, ttl in _META.iter_unpack(entry.meta):
                pack(buf, offset, ttl - age if ttl > age else 0)
            entry.template = bytes(buf)
            entry.age = age
        t = entry.template
        return data[:2] + t[2:HEADER_LEN] + data[HEADER_LEN:qend] + t[qend:]

    def answer_stale(self, entry: Entry, data: bytes, qend: int) -> bytes:
        """An expired entry as the reply to `data`, every TTL stale_ttl (RFC 8767 §4)."""
        self.stale[entry.kind] += 1
        buf = bytearray(entry.template)
        stale_ttl = self.settings.stale_ttl
        for offset, _ in _META.iter_unpack(entry.meta):
            _TTL.pack_into(buf, offset, stale_ttl)
        buf[0:2] = data[:2]
        buf[HEADER_LEN:qend] = data[HEADER_LEN:qend]
        return bytes(buf)

    def wants_prefetch(self, entry: Entry, now: float) -> bool:
        """A popular fresh entry in the last 10 % of its life, not refreshed yet (once)."""
        threshold = self.settings.prefetch
        return (
            threshold > 0
            and entry.hits >= threshold
            and not entry.prefetched
            and entry.kind != KIND_SERVFAIL
            and now >= entry.expires - entry.lifetime * PREFETCH_FRACTION
        )

    # -- storing -----------------------------------------------------------------------------

    def insert(self, key: bytes, reply: bytes, qtype: int, now: float) -> Entry | None:
        """Store an upstream reply if the rules allow; the new entry, or None."""
        scanned = scan_reply(reply, qtype, self.settings)
        if scanned is None:
            return None
        kind, lifetime, ttls = scanned
        buf = bytearray(reply)
        # A cached answer is not authoritative: AA is for the authority itself (RFC 1035
        # §4.1.1).
        buf[2] &= 0xFB
        meta = bytearray()
        for offset, ttl in ttls:
            shown = ttl if ttl < lifetime else lifetime
            _TTL.pack_into(buf, offset, shown)
            meta += _META.pack(offset, shown)
        entry = Entry(kind, bytes(buf), bytes(meta), now, lifetime)
        entries = self.entries
        old = entries.get(key)
        if old is not None:
            self.kinds[old.kind] -= 1
            entries.move_to_end(key)
        entries[key] = entry
        self.kinds[kind] += 1
        self.inserts[kind] += 1
        if old is None:
            self._trim()
        return entry

    def _trim(self) -> None:
        entries = self.entries
        size = self.settings.size
        while len(entries) > size:
            _, gone = entries.popitem(last=False)
            self.kinds[gone.kind] -= 1
            self.evictions[gone.kind] += 1

    def _remove(self, key: bytes, entry: Entry) -> None:
        del self.entries[key]
        self.kinds[entry.kind] -= 1

    # -- operations --------------------------------------------------------------------------

    def flush(self) -> int:
        """Drop everything; how many entries there were."""
        count = len(self.entries)
        self.entries.clear()
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

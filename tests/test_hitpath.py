"""Repeated cache hits answered in C (`_mmsg.serve`, pldns/dns/hitpath.py): the same reply and
the same counts as the Python path, and every case Python must decide handed back untouched.

The module is the build's own in the compiled suite, compiled from its source here otherwise
(tests/fakes/mmsg.py). Replies are compared byte for byte with `PacketCache.lookup` on a twin
cache filled the same way at the same time.
"""

from __future__ import annotations

import resource
import socket
import sys
import time
from array import array
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import dns.message
import dns.rcode
import pytest

from pldns.dns import listeners
from pldns.dns.cache import KINDS, PacketCache, cache_key
from pldns.dns.settings import Cache
from pldns.dns.stats import LABEL_INDEX, QTYPE_LABELS, Histogram
from pldns.dns.wire import Query, scan_query
from tests.fakes import clients
from tests.test_cache import SOA, reply_to

NAME = "Www.Example.TEST"
NOW = 1000.0
HOST = "127.0.0.1"


class Wire:
    """A server socket read with serve, and a client that sends to it and reads replies."""

    def __init__(self) -> None:
        self.server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.server.bind((HOST, 0))
        self.server.setblocking(False)
        self.client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.client.bind((HOST, 0))
        self.client.settimeout(0.5)

    def send(self, data: bytes) -> None:
        self.client.sendto(data, self.server.getsockname())

    def reply(self) -> bytes | None:
        try:
            return self.client.recv(65535)
        except TimeoutError:
            return None

    def close(self) -> None:
        self.server.close()
        self.client.close()


@pytest.fixture
def wire() -> Iterator[Wire]:
    w = Wire()
    yield w
    w.close()


def tally(mmsg: ModuleType) -> array[int]:
    t = array("Q", bytes(8 * mmsg.TALLY_SIZE))
    for index, bound in enumerate(Histogram().buckets):
        t[mmsg.T_BOUNDS + index] = round(bound * 1e9)
    return t


class Twin:
    """Two caches holding the same reply stored at the same time: one for serve, one for
    PacketCache.lookup (the Python path), so their answers and counts can be compared."""

    def __init__(self, q: dns.message.Message, reply: bytes, settings: Cache | None = None):
        self.wire = q.to_wire()
        self.q: Query = scan_query(self.wire)
        key = cache_key(self.wire, self.q)
        assert key is not None
        self.key = key
        self.c = PacketCache(settings or Cache())
        self.py = PacketCache(settings or Cache())
        for cache in (self.c, self.py):
            assert cache.insert(key, reply, self.q.qtype, NOW) is not None
        label = QTYPE_LABELS.get(self.q.qtype, "other")
        self.raw = {self.wire[2:]: (key, self.q, label, self.q.qend, 1232, LABEL_INDEX[label])}

    def serve(
        self, mmsg: ModuleType, w: Wire, now: float, t: array[int] | None = None, **kw: Any
    ) -> tuple[int, list[tuple[bytes, str, bytes]]]:
        args = {
            "raw": self.raw,
            "entries": self.c.entries,
            "allowed": {HOST: True},
            "prefetch": self.c.settings.prefetch,
        }
        args.update(kw)
        got: tuple[int, list[tuple[bytes, str, bytes]]] = mmsg.serve(
            w.server.fileno(),
            64,
            args["raw"],
            args["entries"],
            args["allowed"],
            args["prefetch"],
            now,
            t if t is not None else tally(mmsg),
        )
        return got

    def python(self, data: bytes, now: float) -> bytes | None:
        reply, _ = self.py.lookup(self.key, data, self.q.qend, now)
        return reply

    def hits(self) -> tuple[int, int]:
        return self.c.entries[self.key].hits, self.py.entries[self.key].hits


def a_reply(q: dns.message.Message, ttl: int = 300) -> bytes:
    return reply_to(
        q,
        answers=[(NAME, ttl, "A", "192.0.2.1"), (NAME, ttl, "A", "192.0.2.2")],
        authority=[("example.test", 3600, "NS", "ns1.example.test.")],
        additional=[("ns1.example.test", 600, "A", "192.0.2.53")],
    )


def ask(mmsg: ModuleType, w: Wire, twin: Twin, data: bytes, now: float, **kw: Any) -> bytes | None:
    """Send `data`, let serve read it; the reply if serve answered (else it must hand it back)."""
    w.send(data)
    time.sleep(0.002)
    read, rest = twin.serve(mmsg, w, now, **kw)
    assert read == 1
    if rest:
        assert rest[0][0] == data and rest[0][1] == HOST
        return None
    return w.reply()


# -- answered here --------------------------------------------------------------------------


@pytest.mark.parametrize("edns", [None, 0])
def test_a_hit_is_the_python_reply_byte_for_byte_as_the_ttls_count_down(
    mmsg: ModuleType, wire: Wire, edns: int | None
) -> None:
    q = dns.message.make_query(NAME, "A", use_edns=edns, want_dnssec=edns is not None)
    twin = Twin(q, a_reply(q))
    for n, now in enumerate((NOW, NOW + 0.4, NOW + 1.0, NOW + 59.9, NOW + 250.2)):
        q.id = 1000 + n
        data = q.to_wire()
        got = ask(mmsg, wire, twin, data, now)
        assert got is not None, f"not served at {now}"
        assert got == twin.python(data, now), f"at {now}"
        assert got[:2] == data[:2] and got[12 : twin.q.qend] == data[12 : twin.q.qend]
        assert twin.hits() == (n + 1, n + 1)
    msg = dns.message.from_wire(got)
    assert {rr.ttl for rr in msg.answer} == {300 - 250}


def test_a_denial_is_answered_with_its_soa_counted_down(mmsg: ModuleType, wire: Wire) -> None:
    q = dns.message.make_query("nx.example.test", "A")
    soa = [("example.test", 3600, "SOA", SOA.format(minimum=120))]
    twin = Twin(q, reply_to(q, authority=soa, rcode=dns.rcode.NXDOMAIN))
    t = tally(mmsg)
    data = q.to_wire()
    wire.send(data)
    time.sleep(0.002)
    assert twin.serve(mmsg, wire, NOW + 20, t) == (1, [])
    got = wire.reply()
    assert got == twin.python(data, NOW + 20)
    assert dns.message.from_wire(got).authority[0].ttl == 100
    # counted as Python counts: (label, kind, rcode) slot, one duration, nothing lost
    slot = (LABEL_INDEX["A"] * mmsg.KINDS + KINDS.index("denial")) * mmsg.RCODES + 3
    assert t[slot] == 1 and t[mmsg.T_TOUCHED_N] == 1 and t[mmsg.T_TOUCHED] == slot
    assert t[mmsg.T_SERVED] == 1 and t[mmsg.T_LOST] == 0
    assert sum(t[mmsg.T_BUCKETS : mmsg.T_BUCKETS + mmsg.NBOUNDS + 1]) == 1
    assert 0 < t[mmsg.T_NANOS] < 10**9


def test_a_prefetched_entry_is_served_without_counting_further(
    mmsg: ModuleType, wire: Wire
) -> None:
    q = dns.message.make_query(NAME, "A")
    twin = Twin(q, a_reply(q), Cache(prefetch=2))
    twin.c.entries[twin.key].hits = -1  # refreshed already (CacheFlow._prefetch)
    assert ask(mmsg, wire, twin, q.to_wire(), NOW + 295) is not None  # in the last 10 %
    assert twin.c.entries[twin.key].hits == -1


# -- handed back to Python --------------------------------------------------------------------


def test_every_case_python_decides_is_handed_back_untouched(mmsg: ModuleType, wire: Wire) -> None:
    q = dns.message.make_query(NAME, "A")
    data = q.to_wire()
    twin = Twin(q, a_reply(q), Cache(prefetch=3))
    entry = twin.c.entries[twin.key]
    cases: dict[str, dict[str, Any]] = {
        "expired": {"now": NOW + 300},
        "clock gone back": {"now": NOW - 1},
        "client not known allowed": {"allowed": {}},
        "client refused": {"allowed": {HOST: False}},
        "query not seen hit": {"raw": {}},
        "entry gone": {"entries": {}},
        "raw entry of another shape": {"raw": {data[2:]: twin.raw[data[2:]][:3]}},
        "label index out of range": {"raw": {data[2:]: (*twin.raw[data[2:]][:5], mmsg.LABELS)}},
    }
    for what, kw in cases.items():
        now = kw.pop("now", NOW + 1)
        assert ask(mmsg, wire, twin, data, now, **kw) is None, what
        assert entry.hits == 0, what
    entry.hits = 2  # the third hit makes it popular, and it is in its last 10 %: prefetch
    assert ask(mmsg, wire, twin, data, NOW + 275) is None
    assert entry.hits == 2
    assert ask(mmsg, wire, twin, data, NOW + 260) is not None  # not yet in the last 10 %
    assert entry.hits == 3


def test_a_big_reply_over_512_is_served_within_the_limit_and_handed_back_over_it(
    mmsg: ModuleType, wire: Wire
) -> None:
    q = dns.message.make_query(NAME, "TXT", use_edns=0, payload=4096)
    rows = [(NAME, 60, "TXT", '"' + "x" * 200 + f'{i}"') for i in range(4)]
    twin = Twin(q, reply_to(q, answers=rows))
    data = q.to_wire()
    got = ask(mmsg, wire, twin, data, NOW)
    assert got is not None and len(got) > 512 and got == twin.python(data, NOW)
    key, sq, label, qend, _, index = twin.raw[data[2:]]
    small = {data[2:]: (key, sq, label, qend, 600, index)}
    assert ask(mmsg, wire, twin, data, NOW, raw=small) is None  # Python truncates it


@pytest.mark.parametrize(
    "damage",
    ["short blob", "length past the trailer", "ttl offset past the records", "kind", "meta"],
)
def test_a_stored_entry_that_does_not_look_right_is_handed_back(
    mmsg: ModuleType, wire: Wire, damage: str
) -> None:
    q = dns.message.make_query(NAME, "A")
    twin = Twin(q, a_reply(q))
    entry = twin.c.entries[twin.key]
    blob = bytearray(entry.blob)
    n = (blob[0] << 8) | blob[1]
    if damage == "short blob":
        blob = blob[:20]
    elif damage == "length past the trailer":
        blob[0:2] = (len(blob) - 10).to_bytes(2, "big")
    elif damage == "ttl offset past the records":
        blob[n : n + 2] = (n - 2).to_bytes(2, "big")
    elif damage == "kind":
        blob[-1] = 7
    else:
        blob = blob[:n] + blob[n + 1 :]  # the TTL list no longer whole
    entry.blob = bytes(blob)
    assert ask(mmsg, wire, twin, q.to_wire(), NOW + 1) is None
    assert entry.hits == 0


def test_other_datagrams_come_back_as_recv_gives_them(mmsg: ModuleType, wire: Wire) -> None:
    q = dns.message.make_query(NAME, "A")
    twin = Twin(q, a_reply(q))
    sent = [b"\x00\x01", b"\x12" * 16, dns.message.make_query("other.test", "A").to_wire()]
    for data in sent:
        wire.send(data)
    time.sleep(0.005)
    read, rest = twin.serve(mmsg, wire, NOW)
    assert read == 3
    assert [item[0] for item in rest] == sent
    assert {item[1] for item in rest} == {HOST}
    assert all(item[2] == rest[0][2] for item in rest)
    assert twin.serve(mmsg, wire, NOW) == (0, [])  # nothing waiting: not an error


def test_bad_arguments_raise(mmsg: ModuleType, wire: Wire) -> None:
    fd = wire.server.fileno()
    with pytest.raises(ValueError, match="TALLY_SIZE"):
        mmsg.serve(fd, 64, {}, {}, {}, 0, NOW, array("Q", bytes(8)))
    with pytest.raises(BufferError):
        mmsg.serve(fd, 64, {}, {}, {}, 0, NOW, b"\x00" * 8 * mmsg.TALLY_SIZE)  # read-only
    with pytest.raises(TypeError):
        mmsg.serve(fd, 64, [], {}, {}, 0, NOW, tally(mmsg))
    with pytest.raises(OSError):
        mmsg.serve(-1, 64, {}, {}, {}, 0, NOW, tally(mmsg))


# -- the long run ---------------------------------------------------------------------------


def test_a_million_hits_and_handbacks_leak_nothing(mmsg: ModuleType, wire: Wire) -> None:
    """10^6 datagrams, half answered and half handed back: no reference, slot or byte kept."""
    q = dns.message.make_query(NAME, "A")
    twin = Twin(q, a_reply(q, ttl=86400))
    served, other = q.to_wire(), dns.message.make_query("other.test", "A").to_wire()
    entry = twin.c.entries[twin.key]
    blob, raw_item = entry.blob, twin.raw[served[2:]]
    refs = (sys.getrefcount(entry), sys.getrefcount(blob), sys.getrefcount(raw_item))
    wire.client.setblocking(False)
    client, to = wire.client.fileno(), wire.server.getsockname()
    to_addr = socket.inet_aton(to[0])
    addr = (2).to_bytes(2, "little") + to[1].to_bytes(2, "big") + to_addr + bytes(8)
    burst, addrs = [served, other] * 32, [addr] * 64
    t = tally(mmsg)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    handed = 0
    for _ in range(1_000_000 // 64):
        assert mmsg.send(client, burst, addrs) == 0
        got = 0
        while got < 64:
            read, rest = twin.serve(mmsg, wire, NOW + 5, t)
            got += read
            handed += len(rest)
        while mmsg.recv(client, 64):
            pass
    answered = t[mmsg.T_SERVED]
    assert answered == handed == 1_000_000 // 2 and t[mmsg.T_LOST] == 0
    assert entry.hits == answered
    assert t[mmsg.T_TOUCHED_N] == 1  # one slot, touched once
    assert (sys.getrefcount(entry), sys.getrefcount(blob), sys.getrefcount(raw_item)) == refs
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss
    assert grown_kb < 20_000, f"max RSS grew {grown_kb} kB"


# -- in the listener --------------------------------------------------------------------------


class BrokenServe:
    """_mmsg whose serve raises, as a bug in the C path would."""

    def __init__(self, module: ModuleType) -> None:
        self.module = module
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.module, name)

    def serve(self, *args: Any) -> Any:
        self.calls += 1
        raise RuntimeError("a bug")


def test_a_failing_hit_path_is_switched_off_and_udp_keeps_answering(
    mmsg: ModuleType, pldns: Any, upstream: Any, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    upstream.answer("www.example.test", "192.0.2.1")
    broken = BrokenServe(mmsg)
    monkeypatch.setattr(listeners, "BATCH_IO", broken)
    server = pldns(in_process=True)
    q = dns.message.make_query("www.example.test", "A")
    got = []
    for n in range(6):
        q.id = n
        got.append(clients.raw_udp(server.addr, q.to_wire(), timeout=0.5))
    # 1: a miss, 2: a hit learnt by Python, 3: serve fails (before reading, here: a failure
    # after reading would lose that batch, as UDP may), and Python answers it and the rest
    assert all(g is not None and g[:2] == n.to_bytes(2, "big") for n, g in enumerate(got))
    assert broken.calls == 1
    assert server.call(lambda: [lst.udp.hit_path for lst in server.app.listeners]) == [None]
    assert "answering cache hits in C failed" in caplog.text

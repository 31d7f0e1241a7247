"""The forwarder's timeout queue on a fake clock: an answered attempt leaves nothing behind,
and an attempt cut short by its query's deadline times out on time, not in sending order."""

from __future__ import annotations

import dns.message

from pldns.dns.forwarder import Forwarder
from pldns.dns.settings import Forward, HostPort
from pldns.dns.stats import Stats
from pldns.dns.upstream import Channel
from pldns.dns.wire import scan_query
from tests.fakes.clock import FakeLoop


class Capture:
    """A UDP transport that keeps the last datagram sent (to answer it by hand)."""

    def __init__(self) -> None:
        self.last = b""

    def sendto(self, data: bytes, addr: object = None) -> None:
        self.last = data

    def close(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False


def forwarder(settings: Forward) -> tuple[Forwarder, FakeLoop, Channel]:
    fw = Forwarder([HostPort("192.0.2.1", 53)], settings, Stats())
    loop = FakeLoop()
    fw._loop = loop  # type: ignore[assignment]
    ch = Channel(fw, 10**12)
    ch.transport = Capture()  # type: ignore[assignment]
    fw.upstreams[0].channels.append(ch)
    return fw, loop, ch


def query(i: int) -> bytes:
    return dns.message.make_query(f"q{i}.example.test", "A").to_wire()


def answer(packet: bytes) -> bytes:
    return dns.message.make_response(dns.message.from_wire(packet)).to_wire()


def test_answered_attempts_leave_nothing_waiting() -> None:
    fw, loop, ch = forwarder(Forward(udp_sockets=1, try_timeout=1.0, deadline=3.0))
    got: list[bytes | None] = []
    transport: Capture = ch.transport  # type: ignore[assignment]
    for i in range(10_000):
        wire = query(i)
        fw.forward(wire, scan_query(wire), 1232, got.append)
        assert fw.waiting() == 1
        ch.datagram_received(answer(transport.last), None)
        assert fw.waiting() == 0  # gone with the reply, not at try_timeout
        loop.advance(0.0001)
    assert len(got) == 10_000 and None not in got
    assert fw._early == [] and not fw._early_p
    loop.advance(5.0)
    assert loop.live() == fw.timers() <= 1


def test_an_attempt_cut_short_by_its_deadline_times_out_on_time() -> None:
    # try_timeout 0.3, deadline 0.5: the last answer is due at 0.45 (margin 10 %).
    fw, loop, _ = forwarder(Forward(udp_sockets=1, try_timeout=0.3, deadline=0.5))
    t0 = loop.time()
    done_at: dict[str, float] = {}
    a, b = query(1), query(2)
    fw.forward(a, scan_query(a), 1232, lambda r: done_at.setdefault("a", loop.time()))
    loop.advance(0.29)
    fw.forward(b, scan_query(b), 1232, lambda r: done_at.setdefault("b", loop.time()))
    # At 0.3 A's first attempt times out; its retry may only run to 0.45, earlier than B's
    # attempt queued before it (0.59): it must still fire at 0.45.
    loop.advance(0.18)
    assert "a" in done_at and "b" not in done_at
    assert done_at["a"] - t0 <= 0.45 + 0.011
    loop.advance(1.0)
    assert done_at["b"] - t0 <= 0.29 + 0.45 + 0.011
    assert fw.waiting() == 0

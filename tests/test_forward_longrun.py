"""The forwarder on a fake clock: long failure runs, bounded timers, every query answered."""

from __future__ import annotations

import dns.message

from pldns.dns.forwarder import Forwarder
from pldns.dns.settings import Forward, HostPort
from pldns.dns.stats import Stats
from pldns.dns.upstream import Channel
from pldns.dns.wire import scan_query
from tests.fakes.clock import FakeLoop


class BlackHole:
    """A UDP transport whose datagrams go nowhere."""

    def __init__(self) -> None:
        self.sent = 0

    def sendto(self, data: bytes, addr: object = None) -> None:
        self.sent += 1

    def close(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False


def black_holed(n: int, settings: Forward) -> tuple[Forwarder, FakeLoop]:
    addresses = [HostPort(f"192.0.2.{i + 1}", 53) for i in range(n)]
    fw = Forwarder(addresses, settings, Stats())
    loop = FakeLoop()
    fw._loop = loop  # type: ignore[assignment]
    for up in fw.upstreams:
        ch = Channel(fw, 10**12)
        ch.transport = BlackHole()  # type: ignore[assignment]
        up.channels.append(ch)
    return fw, loop


QUERY = dns.message.make_query("www.example.test", "A").to_wire()


def test_thousands_of_failures_in_a_row_do_not_overflow() -> None:
    fw, _ = black_holed(1, Forward(udp_sockets=1))
    up = fw.upstreams[0]
    for _ in range(5_000):  # the first release raised OverflowError at 1,027
        up.failed("timeout", 0.0)
    assert up.retry_at <= 30.0


def test_sweep_timers_stay_bounded_while_every_upstream_is_dead() -> None:
    fw, loop = black_holed(2, Forward(udp_sockets=1, try_timeout=0.2, deadline=1.0))
    answers: list[bytes | None] = []
    q = scan_query(QUERY)
    for _ in range(3_000):  # 30 s of 100 qps, each query failing over and giving up
        fw.forward(QUERY, q, 1232, answers.append)
        loop.advance(0.01)
        assert loop.live() <= 2, f"{loop.live()} timers alive"
    loop.advance(5.0)
    assert len(answers) == 3_000 and answers.count(None) == 3_000
    assert loop.live() == 0

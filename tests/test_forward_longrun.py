"""The forwarder on a fake clock: long failure runs, bounded timers, every query answered."""

from __future__ import annotations

import dns.message

from pldns.dns.forwarder import Forwarder
from pldns.dns.settings import Forward, HostPort
from pldns.dns.stats import Stats
from pldns.dns.upstream import Channel
from pldns.dns.wire import scan_query
from tests.fakes.clock import FakeLoop, run_for, served


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
    fw, loop = black_holed(1, Forward(udp_sockets=1, try_timeout=0.05, deadline=0.2))
    answers: list[bytes | None] = []
    q = scan_query(QUERY)
    for _ in range(2_000):  # the first release raised OverflowError at 1,027 failures
        fw.forward(QUERY, q, 1232, answers.append)
        loop.advance(0.25)
    assert answers == [None] * 2_000
    assert fw.timers() <= 2 and loop.live() <= 2


def test_sweep_timers_stay_bounded_while_every_upstream_is_dead() -> None:
    fw, loop = black_holed(2, Forward(udp_sockets=1, try_timeout=0.2, deadline=1.0))
    answers: list[bytes | None] = []
    q = scan_query(QUERY)
    for _ in range(3_000):  # 30 s of 100 qps, each query failing over and giving up
        fw.forward(QUERY, q, 1232, answers.append)
        loop.advance(0.01)
        # One sweep timer, one probe timer per upstream: nothing else, whatever happens.
        assert loop.live() <= 1 + 2, f"{loop.live()} timers alive"
        assert loop.live() == fw.timers()
    loop.advance(5.0)
    assert len(answers) == 3_000 and answers.count(None) == 3_000
    assert loop.live() == 2  # the probes of the two dead upstreams go on
    fw.close()
    assert loop.live() == 0


# --- ten minutes of fake time ------------------------------------------------------------


def fake_run(fw: Forwarder, loop: FakeLoop, seconds: float, qps: int, change: object = None):  # type: ignore[no-untyped-def]
    res = run_for(fw, loop, seconds, qps, change)  # type: ignore[arg-type]
    assert res.timers_peak <= 1 + 2 * len(fw.upstreams), res.timers_peak
    return res.latencies, res.answered, res.total


def p99(values: list[float]) -> float:
    return sorted(values)[int(len(values) * 0.99)]


def test_one_of_two_upstreams_dead_for_ten_minutes() -> None:
    settings = Forward(udp_sockets=1, try_timeout=1.0, deadline=3.0)
    fw, loop, servers = served(2, settings)
    healthy, _, _ = fake_run(fw, loop, 10.0, 100)
    servers[0].alive = False
    lat, answered, total = fake_run(fw, loop, 600.0, 100)
    assert answered / total >= 0.999
    late = lat[settings.max_fails :]  # after the first max_fails failures
    assert p99(late) <= 2 * p99(healthy), (p99(late), p99(healthy))
    # Client queries reach the dead one only until the first max_fails timeouts are in (those
    # sent during the first try_timeout); after that, only its probes do.
    in_flight = 100 * settings.try_timeout + settings.max_fails
    probes = (600 + settings.deadline + 1) / settings.health_interval + 1
    assert servers[0].sent - 1_000 <= in_flight + probes
    assert not fw.upstreams[0].stats.healthy and fw.upstreams[1].stats.healthy


def test_all_upstreams_dead_for_ten_minutes_servfail_before_the_deadline() -> None:
    settings = Forward(udp_sockets=1, try_timeout=1.0, deadline=3.0)
    fw, loop, servers = served(2, settings)
    for server in servers:
        server.alive = False
    lat, answered, total = fake_run(fw, loop, 600.0, 20)
    assert answered == 0 and total == 12_000
    assert max(lat) < settings.deadline, max(lat)


def test_a_flapping_upstream_for_ten_minutes() -> None:
    settings = Forward(udp_sockets=1, try_timeout=0.5, deadline=2.0)
    fw, loop, servers = served(2, settings)

    def flap(i: int) -> None:  # dead for 7 s, alive for 7 s, ...
        servers[0].alive = (i // 700) % 2 == 0

    _, answered, total = fake_run(fw, loop, 600.0, 100, flap)
    assert answered == total, "the other upstream always answers in time"
    assert fw.upstreams[0].stats.probes[("udp", "ok")] >= 40


def test_the_dead_upstream_comes_back_after_rise_good_probes() -> None:
    settings = Forward(udp_sockets=1, try_timeout=1.0, deadline=3.0, rise=2)
    fw, loop, servers = served(2, settings)
    servers[0].alive = False
    fake_run(fw, loop, 5.0, 10)
    assert not fw.upstreams[0].stats.healthy
    servers[0].alive = True
    loop.advance(3 * settings.health_interval + 0.01)
    assert fw.upstreams[0].stats.healthy
    assert fw.prober.timers() == 0, "its probe stopped"
    before = servers[0].sent
    fake_run(fw, loop, 1.0, 10)
    assert servers[0].sent - before == 10, "back in first place in the order"

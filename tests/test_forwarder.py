"""The forwarder in-process, against fake upstreams on loopback."""

from __future__ import annotations

import asyncio
import time

import dns.message
import dns.rcode

from pldns.dns.forwarder import Forwarder
from pldns.dns.settings import Forward, HostPort
from pldns.dns.stats import Stats
from pldns.dns.wire import scan_query
from tests.fakes.upstream import FakeUpstream

# Connecting a UDP socket to the broadcast address without SO_BROADCAST fails at once with
# EACCES: an upstream no socket can be opened to, and no packet ever leaves.
UNOPENABLE = HostPort("255.255.255.255", 53)


def forward_once(
    addresses: list[HostPort], name: str, settings: Forward
) -> tuple[bytes | None, float, Forwarder]:
    async def go() -> tuple[bytes | None, float, Forwarder]:
        forwarder = Forwarder(addresses, settings, Stats())
        await forwarder.open()
        data = dns.message.make_query(name, "A").to_wire()
        done: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        started = time.monotonic()
        forwarder.forward(data, scan_query(data), 1232, done.set_result)
        try:
            reply = await asyncio.wait_for(done, settings.deadline + 1)
        finally:
            forwarder.close()
        return reply, time.monotonic() - started, forwarder

    return asyncio.run(go())


def test_an_upstream_without_a_socket_is_skipped_at_once(upstream: FakeUpstream) -> None:
    upstream.answer("www.example.test", "192.0.2.1")
    good = HostPort("127.0.0.1", upstream.port)
    # try_timeout 5 s: waiting on the unreachable upstream would take 5 s, skipping it takes
    # milliseconds; the bound leaves 4 s for a loaded machine.
    reply, elapsed, forwarder = forward_once(
        [UNOPENABLE, good], "www.example.test", Forward(try_timeout=5.0, deadline=8.0)
    )
    assert reply is not None
    assert dns.message.from_wire(reply).rcode() == dns.rcode.NOERROR
    assert elapsed < 4.0, "waited for an upstream that cannot be reached"
    assert forwarder.upstreams[0].unreachable
    assert forwarder.upstreams[0].stats.failures["error"] >= 1


def test_only_unopenable_upstreams_give_up_before_the_deadline() -> None:
    reply, elapsed, _ = forward_once(
        [UNOPENABLE], "www.example.test", Forward(try_timeout=5.0, deadline=8.0)
    )
    assert reply is None  # the caller answers SERVFAIL
    assert elapsed < 4.0  # at once, not after a try_timeout (5 s) or the deadline (8 s)

"""One upstream resolver: its pool of UDP sockets and its pool of TCP connections.

Queries go out on a small pool of connected UDP sockets, each bound by the kernel to a random
ephemeral port and replaced after `socket_queries` sends (staggered, so the pool never
reopens at once); with a fresh random ID per attempt, both port and ID are unpredictable
(RFC 5452 §9.2). A reply counts only if it comes from the upstream (the socket is connected),
carries our ID and echoes our question (RFC 5452 §4.3); anything else is ignored.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
from array import array
from typing import Any, Protocol

from pldns.dns.settings import Forward, HostPort
from pldns.dns.stats import UpstreamStats
from pldns.dns.tcppool import TcpPool, questionless_error
from pldns.dns.wire import HEADER_LEN, reply_matches


class Waiter(Protocol):
    """What a channel needs of a query waiting on it."""

    question: bytes


class Owner(Protocol):
    """Receives the outcome of each query sent on a channel (the Forwarder)."""

    def on_reply(self, waiter: Any, reply: bytes) -> None: ...

    def on_error(self, waiter: Any, reason: str) -> None: ...


class UdpChannel(Protocol):
    """What the pool and the forwarder use of a UDP channel: a Channel (a fake in tests).

    A Protocol, not the class: with the data plane compiled (pldns.dns.COMPILED) a value
    typed as a class must be that class, and the fake-clock tests put their own in the pool.
    """

    pending: dict[int, Any]
    budget: int
    retired: bool
    transport: Any

    def send(self, packet: bytes) -> None: ...

    def forget(self, qid: int, waiter: Any) -> bool: ...


class QueryIds:
    """Unpredictable 16-bit query IDs from the OS's CSPRNG, fetched 2048 at a time.

    One getrandom() call per 2048 IDs instead of one per query (`secrets.randbits` makes a
    syscall each time); the IDs are as unpredictable.
    """

    def __init__(self) -> None:
        self._ids = array("H")
        self._next = 0

    def next(self) -> int:
        if self._next >= len(self._ids):
            self._ids = array("H", os.urandom(4096))
            self._next = 0
        qid = self._ids[self._next]
        self._next += 1
        return qid


class Channel(asyncio.DatagramProtocol):
    """One connected UDP socket to one upstream, with the queries waiting on it."""

    def __init__(self, owner: Owner, budget: int) -> None:
        self.owner = owner
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: dict[int, Waiter] = {}
        self.budget = budget  # sends before it is retired
        self.retired = False
        self.impostors = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: object) -> None:
        if len(data) < HEADER_LEN:
            self.impostors += 1
            return
        qid = (data[0] << 8) | data[1]
        waiter = self.pending.get(qid)
        if waiter is None or not (
            reply_matches(data, qid, waiter.question) or questionless_error(data)
        ):
            self.impostors += 1  # late, spoofed or mangled: ignore and keep waiting
            return
        del self.pending[qid]
        self.owner.on_reply(waiter, data)
        self.close_if_drained()

    def send(self, packet: bytes) -> None:
        self.transport.sendto(packet)  # type: ignore[union-attr]

    def error_received(self, exc: Exception) -> None:
        # An ICMP error on a connected socket (port unreachable): every query here fails now
        # rather than at its timeout, so failover is quick when an upstream is down.
        self._fail_all()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail_all()

    def _fail_all(self) -> None:
        pending, self.pending = self.pending, {}
        for waiter in pending.values():
            self.owner.on_error(waiter, "error")

    def forget(self, qid: int, waiter: Waiter) -> bool:
        """Drop a query that timed out; False if it was no longer waiting here."""
        if self.pending.get(qid) is not waiter:
            return False
        del self.pending[qid]
        self.close_if_drained()
        return True

    def close_if_drained(self) -> None:
        if self.retired and not self.pending and self.transport is not None:
            self.transport.close()


class Upstream:
    """One upstream server: its UDP socket pool, its TCP pool and its counters.

    Its health lives in the attempt policy (pldns.dns.attempt), at `index`.
    """

    def __init__(
        self, address: HostPort, settings: Forward, stats: UpstreamStats, owner: Owner, index: int
    ) -> None:
        self.address = address
        self.index = index
        self.settings = settings
        self.stats = stats
        self.owner = owner
        self.family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        self.channels: list[UdpChannel] = []
        self._next = 0
        self._filling: asyncio.Task[None] | None = None
        self.unreachable = False  # the last attempt to open a socket to it failed
        self.last_error = ""
        self.tcp = TcpPool(
            address.host, address.port, self.name, owner, settings.tcp_connections,
            settings.tcp_idle, stats,
        )  # fmt: skip

    @property
    def name(self) -> str:
        return str(self.address)

    # -- the UDP pool --------------------------------------------------------------------------

    def channel(self) -> UdpChannel | None:
        """A channel to send on now (round robin), or None while the pool is (re)opening."""
        channels = self.channels
        if len(channels) < self.settings.udp_sockets:
            self.refill()
        while channels:
            self._next = (self._next + 1) % len(channels)
            ch = channels[self._next]
            if ch.transport is None or ch.transport.is_closing():  # lost: replace it
                channels.remove(ch)
                self.refill()
                continue
            ch.budget -= 1
            if ch.budget <= 0:
                ch.retired = True  # closes once its last reply is in
                channels.remove(ch)
            return ch
        return None

    def refill(self) -> asyncio.Task[None]:
        if self._filling is None:
            self._filling = asyncio.get_running_loop().create_task(self._fill())
        return self._filling

    async def _fill(self) -> None:
        try:
            while len(self.channels) < self.settings.udp_sockets:
                self.channels.append(await self._open())
            self.unreachable = False
        except OSError as err:  # e.g. no route: queries see it as errors, and fail over
            self.last_error = f"socket: {err}"
            self.unreachable = not self.channels
        finally:
            self._filling = None

    async def _open(self) -> Channel:
        loop = asyncio.get_running_loop()
        # Stagger retirement: sockets opened together must not all reopen at the same time.
        quota = self.settings.socket_queries
        budget = quota if quota < 4 else random.randint(quota // 2, quota)
        # A connected socket: the kernel picks a random ephemeral port, and drops datagrams
        # from any other source before we see them. Made here, not by the loop from
        # remote_addr: that path resolves the (numeric) address in the loop's thread pool, a
        # thread hop per socket opened (every `socket_queries` sends).
        sock = socket.socket(self.family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect((self.address.host, self.address.port))
            _, channel = await loop.create_datagram_endpoint(
                lambda: Channel(self.owner, budget), sock=sock
            )
        except BaseException:
            sock.close()
            raise
        return channel

    def close(self) -> None:
        if self._filling is not None:
            self._filling.cancel()
        for ch in self.channels:
            if ch.transport is not None:
                ch.transport.close()
        self.channels.clear()
        self.tcp.close()

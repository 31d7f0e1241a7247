"""Forwarding to upstream resolvers: UDP socket pools, TCP fallback, failover, deadlines.

Every attempt gets a fresh ID from `secrets` and goes out on one of a small pool of
connected UDP sockets, each bound by the kernel to a random ephemeral port and replaced after
`socket_queries` queries, so both ID and port are unpredictable (RFC 5452 §9.2). A reply
counts only if it comes from the upstream (the socket is connected), carries our ID and
echoes our question (RFC 5452 §4.3); anything else is ignored and we keep waiting.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from collections.abc import Sequence

from pldns.config import Forward, HostPort
from pldns.errors import REFUSED, SERVFAIL
from pldns.stats import Stats, UpstreamStats
from pldns.wire import (
    HEADER_LEN,
    OUR_PAYLOAD,
    UDP_MIN,
    Query,
    build_upstream_query,
    is_truncated,
    rcode_of,
    reply_matches,
)

FAILS_BEFORE_DOWN = 3
MAX_BACKOFF = 30.0


class _Channel(asyncio.DatagramProtocol):
    """One connected UDP socket to one upstream, with the queries waiting on it."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: dict[int, tuple[asyncio.Future[bytes], bytes]] = {}
        self.sent = 0
        self.retired = False
        self.impostors = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: object) -> None:
        if len(data) < HEADER_LEN:
            self.impostors += 1
            return
        qid = (data[0] << 8) | data[1]
        entry = self.pending.get(qid)
        if entry is None or not reply_matches(data, qid, entry[1]):
            self.impostors += 1  # late, spoofed or mangled: ignore and keep waiting
            return
        del self.pending[qid]
        if not entry[0].done():
            entry[0].set_result(data)
        self._close_if_drained()

    def error_received(self, exc: Exception) -> None:
        # An ICMP error on a connected socket (port unreachable): every query here fails now
        # rather than at its timeout, so failover is quick when an upstream is down.
        self._fail_all(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail_all(exc or ConnectionError("upstream socket closed"))

    def _fail_all(self, exc: Exception) -> None:
        pending, self.pending = self.pending, {}
        for fut, _ in pending.values():
            if not fut.done():
                fut.set_exception(OSError(str(exc)))

    def forget(self, qid: int, fut: asyncio.Future[bytes]) -> None:
        entry = self.pending.get(qid)
        if entry is not None and entry[0] is fut:
            del self.pending[qid]
        self._close_if_drained()

    def _close_if_drained(self) -> None:
        if self.retired and not self.pending and self.transport is not None:
            self.transport.close()


def _expire(fut: asyncio.Future[bytes]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


class Upstream:
    """One upstream server: its UDP socket pool, health and counters."""

    def __init__(self, address: HostPort, settings: Forward, stats: UpstreamStats) -> None:
        self.address = address
        self.settings = settings
        self.stats = stats
        self.family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        self.channels: list[_Channel] = []
        self._next = 0
        self._filling: asyncio.Task[None] | None = None
        self.fails = 0
        self.retry_at = 0.0
        self.last_error = ""

    @property
    def name(self) -> str:
        return str(self.address)

    def available(self, now: float) -> bool:
        return self.fails < FAILS_BEFORE_DOWN or now >= self.retry_at

    def succeeded(self, seconds: float) -> None:
        self.fails = 0
        self.stats.healthy = True
        self.stats.duration.observe(seconds)

    def failed(self, reason: str, now: float, down: bool = True) -> None:
        """Count a failure; timeouts and socket errors (`down`) also count against health."""
        self.stats.failures[reason] += 1
        if not down:
            return
        self.fails += 1
        self.last_error = reason
        if self.fails >= FAILS_BEFORE_DOWN:
            self.stats.healthy = False
            self.retry_at = now + min(2.0 ** (self.fails - FAILS_BEFORE_DOWN), MAX_BACKOFF)

    async def _channel(self) -> _Channel:
        """A channel to send on: round robin, retiring each after `socket_queries` sends.

        The pool is refilled by one background task; a query waits for it only when there
        is no channel at all (the first queries, or right after the last one retired).
        """
        if len(self.channels) < self.settings.udp_sockets and self._filling is None:
            self._filling = asyncio.get_running_loop().create_task(self._fill())
        if not self.channels:
            await asyncio.shield(self._filling)  # type: ignore[arg-type]
            if not self.channels:
                raise OSError(f"cannot open a socket to {self.address}: {self.last_error}")
        self._next = (self._next + 1) % len(self.channels)
        ch = self.channels[self._next]
        ch.sent += 1
        if ch.sent >= self.settings.socket_queries:
            ch.retired = True  # closes once its last reply is in
            self.channels.remove(ch)
        return ch

    async def _fill(self) -> None:
        try:
            while len(self.channels) < self.settings.udp_sockets:
                self.channels.append(await self._open())
        except OSError as err:  # e.g. no IPv6 route: the query that needed it sees OSError
            self.last_error = f"socket: {err}"
        finally:
            self._filling = None

    async def _open(self) -> _Channel:
        loop = asyncio.get_running_loop()
        sock = socket.socket(self.family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            sock.connect((self.address.host, self.address.port))  # port 0 bind: random port
            _, channel = await loop.create_datagram_endpoint(_Channel, sock=sock)
        except BaseException:
            sock.close()
            raise
        return channel

    async def query_udp(self, packet: bytes, qid: int, question: bytes, timeout: float) -> bytes:
        loop = asyncio.get_running_loop()
        ch = await self._channel()
        while qid in ch.pending:  # never two queries with one ID on one socket
            qid = secrets.randbits(16)
            packet = qid.to_bytes(2, "big") + packet[2:]
        fut: asyncio.Future[bytes] = loop.create_future()
        ch.pending[qid] = (fut, question)
        timer = loop.call_later(timeout, _expire, fut)
        try:
            assert ch.transport is not None
            ch.transport.sendto(packet)
            return await fut
        finally:
            timer.cancel()
            ch.forget(qid, fut)

    async def query_tcp(self, packet: bytes, qid: int, question: bytes, timeout: float) -> bytes:
        """One query on a fresh TCP connection (RFC 7766 §5: used when UDP was truncated)."""
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(self.address.host, self.address.port)
            try:
                writer.write(len(packet).to_bytes(2, "big") + packet)
                while True:
                    size = int.from_bytes(await reader.readexactly(2), "big")
                    reply = await reader.readexactly(size)
                    if reply_matches(reply, qid, question):
                        return reply
            finally:
                writer.close()

    def close(self) -> None:
        if self._filling is not None:
            self._filling.cancel()
        for ch in self.channels:
            if ch.transport is not None:
                ch.transport.close()
        self.channels.clear()


class Forwarder:
    """Sends a client's query to the upstreams in turn until one answers or time runs out."""

    def __init__(self, addresses: Sequence[HostPort], settings: Forward, stats: Stats) -> None:
        self.settings = settings
        self.upstreams = [Upstream(a, settings, stats.upstream(str(a))) for a in addresses]

    def order(self, now: float) -> list[Upstream]:
        """Configured order, upstreams that keep failing last until their backoff ends."""
        ups = self.upstreams
        if all(u.available(now) for u in ups):
            return ups
        return [u for u in ups if u.available(now)] + [u for u in ups if not u.available(now)]

    async def forward(self, data: bytes, q: Query, client_limit: int) -> bytes | None:
        """The upstream's reply (the ID not yet restored), or None when every try failed.

        An upstream's SERVFAIL or REFUSED, a timeout or a socket error moves on to the next
        upstream (round the list again while the deadline allows); if the last reply was such
        an error it is returned, so the client sees what the upstreams said.
        """
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + self.settings.deadline
        question = q.qname + data[q.qend - 4 : q.qend]  # name lower-cased, type/class as sent
        sent_limit = OUR_PAYLOAD if q.opt is not None else UDP_MIN
        ups = self.order(time.monotonic())
        attempts = max(3, 2 * len(ups))
        last: bytes | None = None
        said_no: set[int] = set()  # upstreams that answered SERVFAIL/REFUSED: not asked again
        for attempt in range(attempts):
            up = ups[attempt % len(ups)]
            if id(up) in said_no:
                if len(said_no) == len(ups):
                    break
                continue
            now = loop.time()
            remaining = deadline - now
            if remaining <= 0.001:
                break
            timeout = min(self.settings.try_timeout, remaining)
            qid = secrets.randbits(16)
            packet = build_upstream_query(data, q, qid)
            up.stats.requests += 1
            try:
                reply = await up.query_udp(packet, qid, question, timeout)
                if is_truncated(reply) and client_limit > sent_limit:
                    # The whole answer may fit the client: fetch it over TCP (RFC 7766 §5).
                    # If the client's own limit is no larger, it would be truncated anyway.
                    qid = secrets.randbits(16)
                    packet = qid.to_bytes(2, "big") + packet[2:]
                    up.stats.requests += 1
                    remaining = deadline - loop.time()
                    reply = await up.query_tcp(packet, qid, question, remaining)
            except TimeoutError:
                up.failed("timeout", time.monotonic())
                continue
            except (OSError, EOFError, asyncio.IncompleteReadError) as err:
                up.failed("error", time.monotonic())
                up.last_error = f"{type(err).__name__}: {err}"
                continue
            rcode = rcode_of(reply)
            if rcode in (SERVFAIL, REFUSED):
                reason = "servfail" if rcode == SERVFAIL else "refused"
                up.failed(reason, time.monotonic(), down=False)
                said_no.add(id(up))
                last = reply
                continue
            up.succeeded(loop.time() - now)
            return reply
        return last

    def close(self) -> None:
        for up in self.upstreams:
            up.close()

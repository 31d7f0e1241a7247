"""TCP to one upstream: a small pool of reused connections with pipelined queries.

RFC 7766 §6.2.1: a client should reuse connections and may send several queries on one
without waiting (pipelining); replies may come in any order and are matched by ID (and our
question, RFC 5452 §4.3). A connection is opened on demand, shared by up to `PIPELINE`
queries at once, and closed after `idle` seconds without a query waiting on it (§6.2.3 asks
clients to close idle connections first). A connection that fails fails the queries waiting
on it at once (they move on to the next upstream); timeouts are the forwarder's (one timer).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

from pldns.dns.wire import HEADER_LEN, reply_matches

log = logging.getLogger("pldns.forward")

PIPELINE: Final = 64  # queries waiting on one connection before another is opened
MAX_FRAME_BUFFER: Final = 2 * (65535 + 2)  # an upstream never needs more than one message unread


class TcpChannel(asyncio.Protocol):
    """One TCP connection to an upstream, with the queries waiting on it."""

    def __init__(self, pool: TcpPool) -> None:
        self.pool = pool
        self.owner = pool.owner
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, Any] = {}
        self.queued: list[bytes] = []  # frames written before the connection is up
        self.buffer = bytearray()
        self.closed = False
        self.idle: asyncio.TimerHandle | None = None
        self.impostors = 0

    # -- sending -------------------------------------------------------------------------

    def send(self, packet: bytes) -> None:
        frame = len(packet).to_bytes(2, "big") + packet
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None
        if self.transport is None:
            self.queued.append(frame)
        else:
            self.transport.write(frame)

    def forget(self, qid: int, waiter: Any) -> bool:
        """Drop a query that timed out; False if it was no longer waiting here."""
        if self.pending.get(qid) is not waiter:
            return False
        del self.pending[qid]
        self._maybe_idle()
        return True

    # -- asyncio callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.closed:
            transport.close()
            return
        for frame in self.queued:
            self.transport.write(frame)  # type: ignore[union-attr]
        self.queued.clear()
        self._maybe_idle()

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        while len(buf) >= 2:
            size = (buf[0] << 8) | buf[1]
            if len(buf) < 2 + size:
                break
            reply = bytes(buf[2 : 2 + size])
            del buf[: 2 + size]
            self._reply(reply)
        if len(buf) > MAX_FRAME_BUFFER:  # cannot happen with a sane server
            self.abort("oversized frame")

    def _reply(self, reply: bytes) -> None:
        if len(reply) < HEADER_LEN:
            self.impostors += 1
            return
        qid = (reply[0] << 8) | reply[1]
        waiter = self.pending.get(qid)
        if waiter is None or not (
            reply_matches(reply, qid, waiter.question) or questionless_error(reply)
        ):
            self.impostors += 1
            return
        del self.pending[qid]
        self.owner.on_reply(waiter, reply)
        self._maybe_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None
        self.pool.discard(self)
        self.fail_all("error")

    def eof_received(self) -> bool | None:
        return None  # close our side too; pending queries fail in connection_lost

    # -- closing -------------------------------------------------------------------------

    def fail_all(self, reason: str) -> None:
        pending, self.pending = self.pending, {}
        for waiter in pending.values():
            self.owner.on_error(waiter, reason)

    def _maybe_idle(self) -> None:
        if self.pending or self.closed or self.transport is None or self.idle is not None:
            return
        loop = asyncio.get_running_loop()
        self.idle = loop.call_later(self.pool.idle, self._on_idle)

    def _on_idle(self) -> None:
        self.idle = None
        if not self.pending:
            self.close()

    def close(self) -> None:
        self.closed = True
        self.pool.discard(self)
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None
        if self.transport is not None:
            self.transport.close()

    def abort(self, reason: str) -> None:
        log.debug("upstream %s TCP connection aborted: %s", self.pool.name, reason)
        self.closed = True
        self.pool.discard(self)
        if self.transport is not None:
            self.transport.abort()
        self.fail_all("error")


def questionless_error(reply: bytes) -> bool:
    """FORMERR or NOTIMP without a question section: a server that could not parse our query
    says so without echoing it (RFC 1035 §4.1.1 lets it). On a connected socket, or our own TCP
    connection, with our random ID this is as much ours as any reply (RFC 5452 §9.2: port and
    ID are the entropy; the question adds none, we do not randomize case)."""
    return (
        len(reply) >= HEADER_LEN
        and reply[2] & 0x80 != 0
        and reply[4] == 0
        and reply[5] == 0
        and (reply[3] & 0x0F) in (1, 4)
    )


class TcpPool:
    """Up to `size` connections to one upstream, opened when needed, closed when idle."""

    def __init__(
        self, host: str, port: int, name: str, owner: Any, size: int, idle: float, stats: Any
    ) -> None:
        self.stats = stats
        self.host = host
        self.port = port
        self.name = name
        self.owner = owner
        self.size = size
        self.idle = idle
        self.channels: list[TcpChannel] = []
        self.tasks: set[asyncio.Task[Any]] = set()

    def channel(self) -> TcpChannel:
        """The least loaded open connection with room, or a new one if the pool has room."""
        best: TcpChannel | None = None
        for ch in self.channels:
            if best is None or len(ch.pending) < len(best.pending):
                best = ch
        if best is not None and (len(best.pending) < PIPELINE or len(self.channels) >= self.size):
            return best
        return self._open()

    def _open(self) -> TcpChannel:
        ch = TcpChannel(self)
        self.channels.append(ch)
        self.stats.tcp_opened += 1
        loop = asyncio.get_running_loop()
        task = loop.create_task(loop.create_connection(lambda: ch, self.host, self.port))
        self.tasks.add(task)
        task.add_done_callback(lambda t: self._opened(t, ch))
        return ch

    def _opened(self, task: asyncio.Task[Any], ch: TcpChannel) -> None:
        self.tasks.discard(task)
        if task.cancelled():
            self.discard(ch)
            ch.closed = True
            ch.fail_all("error")
            return
        err = task.exception()
        if err is not None:  # refused, unreachable: every query queued on it moves on now
            self.discard(ch)
            ch.closed = True
            ch.queued.clear()
            ch.fail_all("error")

    def discard(self, ch: TcpChannel) -> None:
        if ch in self.channels:
            self.channels.remove(ch)

    def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        for ch in list(self.channels):
            ch.close()
        self.channels.clear()

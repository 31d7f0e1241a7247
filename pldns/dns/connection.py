"""One TCP client connection (RFC 7766): framed, pipelined, answered out of order, and bounded
in time and memory whatever the client does. The listener (pldns.dns.listeners) accepts it.
"""

from __future__ import annotations

import asyncio
import logging

from pldns.dns.pipeline import Frontend

log = logging.getLogger("pldns.server")


class TcpConnection(asyncio.Protocol):
    """One client connection (RFC 7766): framed, pipelined, answered out of order.

    Bounded in time and memory whatever the client does, with one timer per connection:
    - idle: closed `tcp.idle_timeout` after the last complete query or the last reply sent
      (bytes of an unfinished query do not count: a byte a second keeps nothing open);
    - slow: a query must arrive whole within `tcp.query_timeout` (at most idle_timeout) of its
      first byte, or the connection is closed;
    - unread: replies waiting in our send buffer past `tcp.max_queued_bytes`, or writes
      blocked for idle_timeout, abort the connection (a client that sends but never reads);
    - the ACL is applied at accept: a client outside `allow` holds no slot;
    - at the cap, a new client evicts the connection least worth keeping (see _evict).
    Every close we decide is counted by reason (`Stats.tcp_closed`).
    """

    def __init__(self, frontend: Frontend, registry: set[TcpConnection]) -> None:
        self.frontend = frontend
        self.settings = frontend.tcp
        self.registry = registry
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.host = ""
        self.pending = 0
        self.paused = False  # reading paused (see _serve_buffer)
        self.write_blocked = False
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0
        self.active_at = 0.0  # the last complete query or reply sent (or the accept)
        self.partial_since: float | None = None  # when the unfinished query's first byte came
        self.blocked_since = 0.0
        self.loop: asyncio.AbstractEventLoop | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        stats = self.frontend.stats
        peer = transport.get_extra_info("peername")
        self.host = peer[0] if peer else ""
        if not self.frontend.acl.allowed(self.host):  # no slot for a client we refuse
            stats.tcp_closed["acl"] += 1
            transport.close()
            self.transport = None
            return
        if len(self.registry) >= self.settings.max_connections and not self._evict():
            stats.tcp_rejected += 1
            transport.close()
            self.transport = None
            return
        self.registry.add(self)
        stats.tcp_connections += 1
        self.loop = asyncio.get_running_loop()
        self.active_at = self.loop.time()
        self._arm(self.active_at + self.settings.idle_timeout)

    def _evict(self) -> bool:
        """At the cap, make room for a new client by closing the connection least worth
        keeping: one whose replies go unread first, then the one idle the longest (no query
        in progress). Connections waiting on upstream answers are kept. So clients that hold
        connections without using them (idle, a byte at a time, not reading) cannot lock
        fresh clients out, as Unbound shortens its idle timeout when slots run low."""
        victim: TcpConnection | None = None
        best: tuple[int, float] = (2, 0.0)
        for conn in self.registry:
            if conn.transport is None:
                continue
            if conn.write_blocked:
                rank = (0, conn.blocked_since)
            elif not conn.pending:
                rank = (1, conn.active_at)
            else:
                continue
            if rank < best:
                best, victim = rank, conn
        if victim is None:
            return False
        victim._close("evicted", abort=True)
        victim.registry.discard(victim)  # its slot is free now, not when the loop gets to it
        return True

    # -- the one timer ---------------------------------------------------------------------

    def _arm(self, when: float) -> None:
        """Make sure the timer fires no later than `when` (it is never moved later here)."""
        if self.timer is not None:
            if self.timer_at <= when:
                return
            self.timer.cancel()
        assert self.loop is not None
        self.timer_at = when
        self.timer = self.loop.call_at(when, self._check)

    def _query_timeout(self) -> float:
        return min(self.settings.query_timeout, self.settings.idle_timeout)

    def _check(self) -> None:
        self.timer = None
        transport = self.transport
        if transport is None or self.loop is None:
            return
        now = self.loop.time()
        idle = self.settings.idle_timeout
        if self.partial_since is not None and now >= self.partial_since + self._query_timeout():
            self._close("slow", abort=True)
            return
        if self.write_blocked and now >= self.blocked_since + idle:
            self._close("unread", abort=True)
            return
        if not self.pending and self.partial_since is None and now >= self.active_at + idle:
            # RFC 7766 §6.2.3: close idle connections; one with queries in progress waits.
            self._close("idle", abort=transport.get_write_buffer_size() > 0)
            return
        due = [self.active_at + idle]
        if self.pending:
            due = [now + idle]  # queries in progress end within forward.deadline
        if self.partial_since is not None:
            due.append(self.partial_since + self._query_timeout())
        if self.write_blocked:
            due.append(self.blocked_since + idle)
        self._arm(max(min(due), now + 0.001))

    def _close(self, reason: str, abort: bool) -> None:
        self.frontend.stats.tcp_closed[reason] += 1
        transport = self.transport
        if transport is None:
            return
        # A client that does not read would keep a close() waiting on a drain forever.
        if abort:
            transport.abort()
        else:
            transport.close()

    # -- reading ---------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        self.buffer += data
        self._serve_buffer()

    def _serve_buffer(self) -> None:
        """Hand complete messages to the frontend while the connection is not blocked.

        Blocked means `max_pipelined` queries in progress, or replies piling up unread in
        the send buffer (a client that writes but does not read): reading then pauses and
        the rest waits in the buffer, so neither side can grow memory without bound.
        """
        buf = self.buffer
        transport = self.transport
        served = consumed = False
        while len(buf) >= 2 and transport is not None and not transport.is_closing():
            if self.pending >= self.settings.max_pipelined or self.write_blocked:
                if not self.paused:
                    self.paused = True
                    transport.pause_reading()
                break
            size = (buf[0] << 8) | buf[1]
            if len(buf) < 2 + size:
                break  # a partial message: wait for the rest
            message = bytes(buf[2 : 2 + size])
            del buf[: 2 + size]
            consumed = True
            self.pending += 1
            try:
                if self.frontend.handle(message, self.host, "tcp", self._send):
                    served = True
                else:
                    self.pending -= 1  # dropped: no reply will come
            except Exception:
                self.pending -= 1
                log.exception("TCP query handling failed")
        loop = self.loop
        if loop is None:
            return
        now = loop.time()
        if served:  # a query that gets a reply: activity (garbage frames are not)
            self.active_at = now
            self.partial_since = now if buf else None
        if self.paused:
            self.partial_since = None  # we are the ones not reading: not the client's delay
        elif (buf or (consumed and not served)) and self.partial_since is None:
            self.partial_since = now  # the clock runs until a query arrives whole
        if self.partial_since is not None:
            self._arm(self.partial_since + self._query_timeout())

    def _unblock(self) -> None:
        transport = self.transport
        if (
            self.paused
            and transport is not None
            and self.pending < self.settings.max_pipelined
            and not self.write_blocked
        ):
            self.paused = False
            transport.resume_reading()
            self._serve_buffer()  # messages that arrived while blocked

    # -- writing ---------------------------------------------------------------------------

    def _send(self, reply: bytes) -> None:
        self.pending -= 1
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(len(reply).to_bytes(2, "big") + reply)
        if self.loop is not None:
            self.active_at = self.loop.time()
        if transport.get_write_buffer_size() > self.settings.max_queued_bytes:
            self._close("unread", abort=True)  # replies in progress cannot pile up unbounded
            return
        self._unblock()

    def pause_writing(self) -> None:
        self.write_blocked = True  # the transport's send buffer is over its high-water mark
        if self.loop is not None:
            self.blocked_since = self.loop.time()
            self._arm(self.blocked_since + self.settings.idle_timeout)

    def resume_writing(self) -> None:
        self.write_blocked = False
        self._unblock()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.registry.discard(self)
        self.transport = None

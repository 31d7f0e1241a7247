"""The DNS listeners: UDP and TCP sockets on each listen address, feeding the pipeline.

UDP is read one of two ways, with the same behaviour: in batches through recvmmsg/sendmmsg
(`BatchUdpListener`) where the build has pldns.dns._mmsg (the compiled build), else through
the event loop's datagram transport (`UdpListener`). No exception from one query reaches a
listener: `Frontend.handle` catches per query, and each listener logs what escapes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import socket
from collections.abc import Callable
from typing import Any

from pldns.dns.pipeline import Frontend
from pldns.dns.settings import HostPort

log = logging.getLogger("pldns.server")

UDP_BUFFER = 4 * 1024 * 1024


class UdpListener(asyncio.DatagramProtocol):
    def __init__(self, frontend: Frontend) -> None:
        self.frontend = frontend
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        # addr: (host, port) for IPv4, (host, port, flowinfo, scope_id) for IPv6
        transport = self.transport
        if transport is None:
            return
        try:
            frontend = self.frontend
            if frontend.answer_udp_fast(data, addr[0], addr, transport.sendto):
                return
            frontend.handle(data, addr[0], "udp", lambda reply: transport.sendto(reply, addr))
        except Exception:  # never let one packet take the listener down
            log.exception("UDP query handling failed")

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP listener error: %s", exc)


def batch_io() -> Any:
    """pldns.dns._mmsg (recvmmsg/sendmmsg, built with the compiled data plane), or None."""
    try:
        return importlib.import_module("pldns.dns._mmsg")
    except ImportError:
        return None


BATCH_IO: Any = batch_io()  # the listener's choice; tests set it to test both ways
ROUNDS = 4  # batches read per wake-up before the loop serves the rest (TCP, upstream replies)


class BatchUdpListener:
    """UDP through recvmmsg/sendmmsg: up to `io.BATCH` datagrams per system call each way.

    The replies made while a batch is read (owned names, cache hits, errors) leave in one
    sendmmsg after it; replies that come later (forwarded) leave one by one. A reply the kernel
    does not take (its send buffer full) is dropped and counted (`dropped{reason="send"}`),
    where the transport would queue it: UDP is lossy, and the client retries.
    """

    def __init__(self, frontend: Frontend, sock: socket.socket, io: Any) -> None:
        self.frontend = frontend
        self.sock = sock
        self.fd = sock.fileno()
        self.io = io
        self.batch: int = io.BATCH
        self.datas: list[bytes] = []
        self.addrs: list[bytes] = []
        # Any: typeshed says remove_reader returns bool, uvloop's returns None, and compiled
        # code checks the declared type.
        self.loop: Any = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        loop.add_reader(self.fd, self._readable)

    def close(self) -> None:
        if self.fd < 0:
            return
        if self.loop is not None:
            self.loop.remove_reader(self.fd)
        self.sock.close()
        self.fd = -1

    def _queue(self, reply: bytes, addr: bytes) -> None:
        self.datas.append(reply)
        self.addrs.append(addr)

    def _sender(self, addr: bytes) -> Callable[[bytes], None]:
        """How a reply made later (a forwarded query's) goes out: at once, on its own."""

        def send(reply: bytes) -> None:
            if self.fd >= 0 and not self.io.sendto(self.fd, reply, addr):
                self.frontend.stats.dropped["send"] += 1

        return send

    def _readable(self) -> None:
        frontend = self.frontend
        recv = self.io.recv
        for _ in range(ROUNDS):
            if self.fd < 0:
                return
            try:
                batch = recv(self.fd, self.batch)
            except OSError as exc:
                log.debug("UDP listener error: %s", exc)
                return
            for data, host, addr in batch:
                try:
                    if not frontend.answer_udp_fast(data, host, addr, self._queue):
                        frontend.handle(data, host, "udp", self._sender(addr))
                except Exception:  # never let one packet take the listener down
                    log.exception("UDP query handling failed")
            if self.datas:
                self._flush()
            if len(batch) < self.batch:
                return

    def _flush(self) -> None:
        datas, addrs = self.datas, self.addrs
        self.datas, self.addrs = [], []
        if self.fd < 0:
            return
        try:
            lost = self.io.send(self.fd, datas, addrs)
        except OSError as exc:
            log.debug("UDP listener send error: %s", exc)
            lost = len(datas)
        if lost:
            self.frontend.stats.dropped["send"] += lost


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


def bind_socket(address: HostPort, kind: int, reuse_port: bool = False) -> socket.socket:
    """A bound socket; IPv6 sockets are v6-only so [::] and 0.0.0.0 can both be listened on.

    `reuse_port` (workers > 1): SO_REUSEPORT, so every worker binds the same address and the
    kernel spreads clients over them by a hash of the 4-tuple (one client's flow stays on one
    worker). Linux lets only sockets of the same user join a group.
    """
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        else:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_BUFFER)
        sock.bind((address.host, address.port))
        sock.setblocking(False)
    except OSError as err:
        sock.close()
        proto = "TCP" if kind == socket.SOCK_STREAM else "UDP"
        # "Cannot assign requested address" alone does not say which one (#11).
        raise OSError(err.errno, f"cannot listen on {address} ({proto}): {err.strerror}") from err
    except BaseException:
        sock.close()
        raise
    return sock


class Listener:
    """UDP and TCP on one address."""

    def __init__(self, address: HostPort, reuse_port: bool = False) -> None:
        self.address = address
        self.reuse_port = reuse_port
        self.udp: asyncio.BaseTransport | BatchUdpListener | None = None
        self.tcp: asyncio.Server | None = None

    async def start(self, frontend: Frontend, registry: set[TcpConnection]) -> None:
        loop = asyncio.get_running_loop()
        udp_sock = bind_socket(self.address, socket.SOCK_DGRAM, self.reuse_port)
        try:
            tcp_sock = bind_socket(self.address, socket.SOCK_STREAM, self.reuse_port)
        except BaseException:
            udp_sock.close()  # else the UDP port stays bound (a reload could not retry it)
            raise
        try:
            if BATCH_IO is not None:
                batched = BatchUdpListener(frontend, udp_sock, BATCH_IO)
                batched.start(loop)
                self.udp = batched
            else:
                self.udp, _ = await loop.create_datagram_endpoint(
                    lambda: UdpListener(frontend), sock=udp_sock
                )
            self.tcp = await loop.create_server(
                lambda: TcpConnection(frontend, registry), sock=tcp_sock, backlog=1024
            )
        except BaseException:
            self.close()  # first: it stops watching the UDP socket's descriptor
            udp_sock.close()
            tcp_sock.close()
            raise

    def stop_accepting(self) -> None:
        """Close the TCP listening socket; UDP stays open so in-flight replies can go out."""
        if self.tcp is not None:
            self.tcp.close()

    def close(self) -> None:
        if self.udp is not None:
            self.udp.close()
        if self.tcp is not None:
            self.tcp.close()

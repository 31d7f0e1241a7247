"""The DNS listeners: UDP and TCP sockets on each listen address, feeding the pipeline.

No exception from one query reaches a listener: `Frontend.handle` catches per query.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

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

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        transport = self.transport
        if transport is None:
            return
        try:
            frontend = self.frontend
            if frontend.answer_udp_fast(data, addr, transport.sendto):
                return
            frontend.handle(data, addr[0], "udp", lambda reply: transport.sendto(reply, addr))
        except Exception:  # never let one packet take the listener down
            log.exception("UDP query handling failed")

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP listener error: %s", exc)


class TcpConnection(asyncio.Protocol):
    """One client connection (RFC 7766): framed, pipelined, answered out of order."""

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
        self.idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        stats = self.frontend.stats
        if len(self.registry) >= self.settings.max_connections:
            stats.tcp_rejected += 1
            transport.close()
            self.transport = None
            return
        peer = transport.get_extra_info("peername")
        self.host = peer[0] if peer else ""
        self.registry.add(self)
        stats.tcp_connections += 1
        self._arm()

    def _arm(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        loop = asyncio.get_running_loop()
        self.idle = loop.call_later(self.settings.idle_timeout, self._on_idle)

    def _on_idle(self) -> None:
        # RFC 7766 §6.2.3: close idle connections; one with queries still pending waits.
        if self.pending:
            self._arm()
        elif self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        self._arm()
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
        while len(buf) >= 2 and transport is not None and not transport.is_closing():
            if self.pending >= self.settings.max_pipelined or self.write_blocked:
                if not self.paused:
                    self.paused = True
                    transport.pause_reading()
                return
            size = (buf[0] << 8) | buf[1]
            if len(buf) < 2 + size:
                break  # a partial message: wait for the rest
            message = bytes(buf[2 : 2 + size])
            del buf[: 2 + size]
            self.pending += 1
            try:
                if not self.frontend.handle(message, self.host, "tcp", self._send):
                    self.pending -= 1  # dropped: no reply will come
            except Exception:
                self.pending -= 1
                log.exception("TCP query handling failed")

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

    def _send(self, reply: bytes) -> None:
        self.pending -= 1
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(len(reply).to_bytes(2, "big") + reply)
        self._unblock()

    def pause_writing(self) -> None:
        self.write_blocked = True  # the transport's send buffer is over its high-water mark

    def resume_writing(self) -> None:
        self.write_blocked = False
        self._unblock()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.idle is not None:
            self.idle.cancel()
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
    except BaseException:
        sock.close()
        raise
    return sock


class Listener:
    """UDP and TCP on one address."""

    def __init__(self, address: HostPort, reuse_port: bool = False) -> None:
        self.address = address
        self.reuse_port = reuse_port
        self.udp: asyncio.DatagramTransport | None = None
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
            self.udp, _ = await loop.create_datagram_endpoint(
                lambda: UdpListener(frontend), sock=udp_sock
            )
            self.tcp = await loop.create_server(
                lambda: TcpConnection(frontend, registry), sock=tcp_sock, backlog=1024
            )
        except BaseException:
            udp_sock.close()
            tcp_sock.close()
            self.close()
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

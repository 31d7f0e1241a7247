"""The DNS listeners: UDP and TCP sockets on each listen address, feeding the pipeline.

UDP is read one of two ways, with the same behaviour: in batches through recvmmsg/sendmmsg
(`BatchUdpListener`, which also has repeated cache hits answered in C: pldns.dns.hitpath)
where the build has pldns.dns._mmsg (the compiled build), else through the event loop's
datagram transport (`UdpListener`). A TCP client is a `TcpConnection` (pldns.dns.connection).
No exception from one query reaches a listener: `Frontend.handle` catches per query, and each
listener logs what escapes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import socket
from collections.abc import Callable
from typing import Any

from pldns.dns.connection import TcpConnection
from pldns.dns.hitpath import HitPath
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
        # repeated cache hits answered in C (pldns/dns/hitpath.py) where the module can
        self.hit_path: HitPath | None = HitPath(io, frontend) if HitPath.usable(io) else None
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
        hit_path = self.hit_path
        queue = self._queue
        for _ in range(ROUNDS):
            if self.fd < 0:
                return
            try:
                got = hit_path.serve(self.fd, self.batch) if hit_path is not None else None
                if got is None:
                    batch = recv(self.fd, self.batch)
                    count = len(batch)
                else:
                    count, batch = got
            except OSError as exc:
                log.debug("UDP listener error: %s", exc)
                return
            except Exception:  # a bug in the C hit path must not stop UDP: Python answers
                log.exception("answering cache hits in C failed; Python answers them from now")
                self.hit_path = hit_path = None
                return
            for data, host, addr in batch:
                try:
                    if not frontend.answer_udp_fast(data, host, addr, queue):
                        frontend.handle(data, host, "udp", self._sender(addr))
                except Exception:  # never let one packet take the listener down
                    log.exception("UDP query handling failed")
            if self.datas:
                self._flush()
            if count < self.batch:
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

"""Fake upstreams for the torture harness: raw bytes, fast enough to stay out of the way.

One asyncio loop in a daemon thread serves any number of them, UDP and TCP on one loopback
port each. A mode per upstream, switchable while running:
  fast       every A query -> 192.0.2.1; names starting "big" -> ~3 KB of TXT (TC=1 over UDP)
  blackhole  never answers (UDP or TCP)
  spoof      before each genuine reply, 10 forged ones carrying SPOOF_IP: 4 with a wrong ID
             from the right address and port, 3 with the right ID for another name, 3 with the
             right ID and question from another port. pldns must take none of them.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading

from tests.fakes.ports import bind_pair  # torture.py puts the repository on sys.path

SPOOF_IP = bytes((203, 0, 113, 66))
GOOD_IP = bytes((192, 0, 2, 1))


def question_end(data: bytes) -> int:
    i = 12
    while i < len(data) and data[i]:
        i += data[i] + 1
    return i + 5


def answer(query: bytes, ip: bytes = GOOD_IP, qid: bytes | None = None) -> bytes:
    end = question_end(query)
    head = (qid or query[:2]) + bytes((0x80 | (query[2] & 0x01), 0x80))
    if query[12:].startswith(b"\x03big"):
        rr = b"".join(
            b"\xc0\x0c\x00\x10\x00\x01\x00\x00\x00\x3c\x00\x3d\x3c" + b"%060d" % i
            for i in range(48)
        )
        return head + b"\x00\x01\x00\x30\x00\x00\x00\x00" + query[12:end] + rr
    rr = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + ip
    return head + b"\x00\x01\x00\x01\x00\x00\x00\x00" + query[12:end] + rr


class Upstream:
    def __init__(self, world: World, mode: str) -> None:
        self.world = world
        self.mode = mode
        self.port = 0
        self.udp_received = 0
        self.tcp_connections = 0
        self.spoofed_sent = 0
        self.side = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # spoofs from another port
        self.side.bind(("127.0.0.1", 0))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, up: Upstream) -> None:
        self.up = up
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        up = self.up
        up.udp_received += 1
        if up.mode == "blackhole" or len(data) < 17 or self.transport is None:
            return
        reply = answer(data)
        if data[12:].startswith(b"\x03big") and len(reply) > 1232:
            reply = reply[:2] + bytes((reply[2] | 0x02, reply[3])) + b"\x00\x01" + b"\x00" * 6
            reply += data[12 : question_end(data)]
        if up.mode == "spoof":  # each must be rejected; the genuine reply comes after them
            for _ in range(4):  # from the right address and port, a wrong ID
                wrong = os.urandom(2)
                if wrong != data[:2]:
                    self.transport.sendto(answer(data, SPOOF_IP, wrong), addr)
                    up.spoofed_sent += 1
            other = bytearray(data)
            other[13] ^= 0x01  # the right ID, another name (RFC 5452 §4.3: question must match)
            for _ in range(3):
                self.transport.sendto(answer(bytes(other), SPOOF_IP), addr)
                up.spoofed_sent += 1
            for _ in range(3):  # the right ID and question, from another port
                up.side.sendto(answer(data, SPOOF_IP), addr)
                up.spoofed_sent += 1
        self.transport.sendto(reply, addr)


class World:
    """The loop thread all fake upstreams run on."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers: list[object] = []

    def upstream(self, mode: str) -> Upstream:
        up = Upstream(self, mode)
        asyncio.run_coroutine_threadsafe(self._start(up), self.loop).result(10)
        return up

    async def _start(self, up: Upstream) -> None:
        loop = asyncio.get_running_loop()
        tcp, udp = bind_pair()
        up.port = tcp.getsockname()[1]
        udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(up), sock=udp)
        server = await asyncio.start_server(
            lambda r, w: self._tcp(up, r, w), sock=tcp, backlog=1024
        )
        self.servers += [transport, server]

    async def _tcp(self, up: Upstream, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        up.tcp_connections += 1
        try:
            while True:
                size = int.from_bytes(await r.readexactly(2), "big")
                query = await r.readexactly(size)
                if up.mode != "blackhole":
                    reply = answer(query)
                    w.write(len(reply).to_bytes(2, "big") + reply)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()

    def stop(self) -> None:
        def close() -> None:
            for s in self.servers:
                s.close()  # type: ignore[attr-defined]
            self.loop.stop()

        self.loop.call_soon_threadsafe(close)
        self.thread.join(5)

"""A TCP client that writes queries but does not read the replies cannot grow our memory:
once the send buffer is over its high-water mark, the connection stops reading.

First a TcpConnection driven through a fake transport (inside a running loop, for its
timers); then a real connection to an in-process pldns, with the bytes queued measured on
the server's own transport."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

import dns.message
import pytest

from pldns.app import App
from pldns.config import parse_config
from pldns.dns.connection import TcpConnection
from pldns.dns.settings import HostPort
from tests.fakes.proc import OWNED, base_config


class FakeTransport:
    """The parts of asyncio.Transport a TcpConnection uses, recording what it does."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.reading = True
        self.closed = False
        self.aborted = False
        self.blocked = False  # count written bytes as unsent (a client that does not read)

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return sum(len(w) for w in self.written) if self.blocked else 0

    def get_extra_info(self, name: str) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else None


def framed(n: int) -> bytes:
    out = b""
    for i in range(n):
        query = dns.message.make_query(OWNED, "A", id=i).to_wire()
        out += len(query).to_bytes(2, "big") + query
    return out


def connection() -> tuple[TcpConnection, FakeTransport]:
    config = parse_config(base_config("127.0.0.1", 1053, ["127.0.0.1:9"]))
    app = App(config, upstreams=(HostPort("127.0.0.1", 9),))
    conn = TcpConnection(app.frontend, app.connections)
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport


def test_a_full_send_buffer_stops_reading_until_it_drains() -> None:
    asyncio.run(_full_send_buffer())


async def _full_send_buffer() -> None:
    conn, transport = connection()
    conn.pause_writing()  # the transport says its buffer is over the high-water mark
    conn.data_received(framed(10))
    assert transport.written == [] and not transport.reading, "kept reading while blocked"
    conn.resume_writing()
    assert len(transport.written) == 10 and transport.reading
    ids = {dns.message.from_wire(w[2:]).id for w in transport.written}
    assert ids == set(range(10))
    conn.connection_lost(None)


def test_blocking_in_the_middle_of_a_burst_keeps_the_rest_for_later() -> None:
    asyncio.run(_blocked_mid_burst())


async def _blocked_mid_burst() -> None:
    conn, transport = connection()
    original_write = transport.write

    def write_then_block(data: bytes) -> None:
        original_write(data)
        if len(transport.written) == 3:
            conn.pause_writing()

    transport.write = write_then_block  # type: ignore[method-assign]
    conn.data_received(framed(8))
    assert len(transport.written) == 3 and not transport.reading
    conn.resume_writing()
    assert len(transport.written) == 8 and transport.reading
    conn.connection_lost(None)


# -- a real connection: the bytes queued for a client that never reads ----------------------


def _sampler(server: Any, peaks: dict[str, int], every: float = 0.001) -> Callable[[], None]:
    """On the server's loop, every `every` s: the largest send buffer (bytes queued for the
    client in our process) and input buffer (read, not yet served) of any TCP connection."""
    stopped = False

    def sample() -> None:
        if stopped:
            return
        for conn in list(server.app.connections):
            t = conn.transport
            if t is not None:
                peaks["queued"] = max(peaks["queued"], t.get_write_buffer_size())
            peaks["input"] = max(peaks["input"], len(conn.buffer))
        server.loop.call_later(every, sample)

    server.loop.call_soon_threadsafe(sample)

    def stop() -> None:
        nonlocal stopped
        stopped = True

    return stop


@pytest.mark.parametrize("max_queued", [65_537, 262_144], ids=["smallest-cap", "default-cap"])
def test_a_client_that_never_reads_holds_bounded_bytes_in_a_real_connection(
    pldns, max_queued: int
) -> None:
    """A real socket pipelines owned queries and never reads. Measured on the server's own
    transport: the bytes queued for it stay under tcp.max_queued_bytes plus one reply and
    the bytes read ahead stay bounded; the server either stops reading (the client's sends
    block: the rest waits in the kernel's buffers, not in pldns) or cuts the client off
    (counted as unread); other clients are served throughout."""
    server = pldns(in_process=True, tcp={"idle_timeout": 30.0, "max_queued_bytes": max_queued})
    peaks = {"queued": 0, "input": 0}
    stop = _sampler(server, peaks)
    burst = framed(1) * 500  # ~25 KB of queries, each answered with ~90 bytes
    sent = 0
    outcome = ""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(server.addr)
        sock.settimeout(1.0)
        end = time.monotonic() + 60.0  # a cap for a loaded machine; idle it takes ~1 s
        while time.monotonic() < end and not outcome:
            try:
                sent += sock.send(burst)
            except TimeoutError:
                outcome = "blocked"  # nothing more fits: the server has stopped reading
            except (ConnectionResetError, BrokenPipeError):
                outcome = "cut off"
        assert outcome, f"the server kept reading: {sent} bytes of queries taken"
        if outcome == "blocked":
            # Served replies filled the client's receive buffer, the kernel's send buffer
            # and then our transport's buffer, where pausing holds them.
            assert peaks["queued"] > 0, "no reply ever waited in our buffer: nothing measured"
    finally:
        stop()
        sock.close()
    unread = server.call(lambda: server.stats.tcp_closed["unread"])
    assert (outcome == "cut off") == (unread == 1), (outcome, unread)
    reply_size = len(dns.message.make_query(OWNED, "A").to_wire()) + 200
    assert peaks["queued"] <= max_queued + 2 + reply_size, peaks
    assert peaks["input"] <= 256 * 1024, peaks  # one read's worth at most, not all we were sent
    assert sent > 65_536, "the client could not even fill a send buffer"
    with socket.create_connection(server.addr, timeout=5) as other:
        other.sendall(framed(1))
        other.settimeout(5)
        assert len(other.recv(2)) == 2, "another client is not served"

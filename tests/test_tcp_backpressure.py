"""A TCP client that writes queries but does not read the replies cannot grow our memory:
once the send buffer is over its high-water mark, the connection stops reading.

A TcpConnection driven through a fake transport (inside a running loop, for its timers)."""

from __future__ import annotations

import asyncio

import dns.message

from pldns.app import App
from pldns.config import parse_config
from pldns.dns.listeners import TcpConnection
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

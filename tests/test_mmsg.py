"""Batched UDP (pldns/dns/_mmsg.c and `BatchUdpListener`): what recvmmsg/sendmmsg read and
send, and a server reading through them answers as the transport path does.

The compiled suite runs every other test through this path too (its build has _mmsg); here
it is tested in the pure suite as well, with the module compiled from its source.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import dns.message
import dns.rcode
import pytest

from pldns.dns import listeners
from pldns.dns.listeners import BatchUdpListener
from tests.fakes import clients
from tests.fakes.proc import OWNED, OWNED_IPS
from tests.fakes.upstream import FakeUpstream


def udp_socket(host: str = "127.0.0.1") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.settimeout(2.0)
    return sock


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket, socket.socket]]:
    """A server socket (non-blocking, read with _mmsg) and two clients, on 127.0.0.1."""
    server, a, b = udp_socket(), udp_socket(), udp_socket()
    server.setblocking(False)
    yield server, a, b
    for sock in (server, a, b):
        sock.close()


def port_of(addr: bytes) -> int:
    return int(struct.unpack_from("!H", addr, 2)[0])


def recv_all(mmsg: ModuleType, fd: int, count: int, want: int) -> list[tuple[bytes, str, bytes]]:
    """Read until `want` datagrams came (loopback delivers at once; bounded anyway)."""
    got: list[tuple[bytes, str, bytes]] = []
    deadline = time.monotonic() + 2.0
    while len(got) < want and time.monotonic() < deadline:
        got.extend(mmsg.recv(fd, count))
    return got


# -- the module -----------------------------------------------------------------------------


def test_recv_reads_every_ready_datagram_whole_in_order_with_its_sender(
    mmsg: ModuleType, pair: tuple[socket.socket, socket.socket, socket.socket]
) -> None:
    server, a, b = pair
    to = server.getsockname()
    sent = []
    for i in range(5):
        for client in (a, b):
            data = bytes([i]) * (i * 100) + client.getsockname()[1].to_bytes(2, "big")
            client.sendto(data, to)
            sent.append((data, client.getsockname()[1]))
    big = b"\xab" * 65507  # the largest IPv4 UDP payload: never cut short
    a.sendto(big, to)
    sent.append((big, a.getsockname()[1]))
    got = recv_all(mmsg, server.fileno(), mmsg.BATCH, len(sent))
    assert [(data, port_of(addr)) for data, _, addr in got] == sent
    assert {host for _, host, _ in got} == {"127.0.0.1"}
    assert mmsg.recv(server.fileno(), 8) == [], "nothing ready: an empty list, no block"


def test_recv_takes_at_most_count_and_at_most_batch(
    mmsg: ModuleType, pair: tuple[socket.socket, socket.socket, socket.socket]
) -> None:
    server, a, _ = pair
    for i in range(mmsg.BATCH + 6):
        a.sendto(i.to_bytes(2, "big"), server.getsockname())
    time.sleep(0.05)
    assert len(mmsg.recv(server.fileno(), 3)) == 3
    assert len(mmsg.recv(server.fileno(), 10_000)) == mmsg.BATCH, "capped at BATCH"
    assert len(mmsg.recv(server.fileno(), 0)) == 1, "count < 1 reads one"
    assert [d for d, _, _ in mmsg.recv(server.fileno(), 64)] == [
        i.to_bytes(2, "big") for i in range(mmsg.BATCH + 4, mmsg.BATCH + 6)
    ]


def test_send_delivers_each_datagram_to_its_address_and_counts_what_failed(
    mmsg: ModuleType, pair: tuple[socket.socket, socket.socket, socket.socket]
) -> None:
    server, a, b = pair
    a.sendto(b"from-a", server.getsockname())
    b.sendto(b"from-b", server.getsockname())
    (_, _, addr_a), (_, _, addr_b) = recv_all(mmsg, server.fileno(), 8, 2)
    too_big = b"x" * 70000  # EMSGSIZE: skipped, the rest still goes
    datas = [b"a1", b"b1", too_big, b"a2"] + [b"b%d" % i for i in range(2, 2 + 2 * mmsg.BATCH)]
    addrs = [addr_a, addr_b, addr_a, addr_a] + [addr_b] * (2 * mmsg.BATCH)
    assert mmsg.send(server.fileno(), datas, addrs) == 1
    assert [a.recv(100), a.recv(100)] == [b"a1", b"a2"]
    assert [b.recv(100) for _ in range(1 + 2 * mmsg.BATCH)] == [
        b"b%d" % i for i in range(1, 2 + 2 * mmsg.BATCH)
    ]
    assert mmsg.send(server.fileno(), [], []) == 0
    assert mmsg.sendto(server.fileno(), b"one", addr_a) is True
    assert a.recv(100) == b"one"
    assert mmsg.sendto(server.fileno(), b"one", b"\x02\x00") is False, "a bad address: False"


def test_bad_arguments_raise_and_a_closed_socket_is_an_oserror(
    mmsg: ModuleType, pair: tuple[socket.socket, socket.socket, socket.socket]
) -> None:
    server = pair[0]
    addr = b"\x02\x00" + b"\x00" * 14
    with pytest.raises(ValueError):
        mmsg.send(server.fileno(), [b"x"], [addr, addr])
    with pytest.raises(TypeError):
        mmsg.send(server.fileno(), ["text"], [addr])
    with pytest.raises(TypeError):
        mmsg.sendto(server.fileno(), "text", addr)
    closed = udp_socket()
    fd = closed.fileno()
    closed.close()
    with pytest.raises(OSError):
        mmsg.recv(fd, 4)


def test_ipv6_senders_have_their_text_address(mmsg: ModuleType, v6_loopback: None) -> None:
    server, client = udp_socket("::1"), udp_socket("::1")
    try:
        server.setblocking(False)
        client.sendto(b"q", server.getsockname()[:2])
        ((data, host, addr),) = recv_all(mmsg, server.fileno(), 4, 1)
        assert (data, host, len(addr)) == (b"q", "::1", 28)
        assert mmsg.sendto(server.fileno(), b"r", addr) and client.recv(10) == b"r"
    finally:
        server.close()
        client.close()


# -- the listener ---------------------------------------------------------------------------


class RecordingIo:
    """_mmsg, with the size of every batch read recorded."""

    def __init__(self, module: ModuleType) -> None:
        self.module = module
        self.BATCH = module.BATCH
        self.batches: list[int] = []

    def recv(self, fd: int, count: int) -> list[tuple[bytes, str, bytes]]:
        got: list[tuple[bytes, str, bytes]] = self.module.recv(fd, count)
        self.batches.append(len(got))
        return got

    def send(self, fd: int, datas: list[bytes], addrs: list[bytes]) -> int:
        return int(self.module.send(fd, datas, addrs))

    def sendto(self, fd: int, data: bytes, addr: bytes) -> bool:
        return bool(self.module.sendto(fd, data, addr))


@pytest.fixture
def batched(mmsg: ModuleType, monkeypatch: pytest.MonkeyPatch) -> RecordingIo:
    io = RecordingIo(mmsg)
    monkeypatch.setattr(listeners, "BATCH_IO", io)
    return io


def test_a_burst_from_many_clients_is_answered_once_each_through_batches(
    batched: RecordingIo, pldns: Callable[..., Any], upstream: FakeUpstream
) -> None:
    upstream.answer("fwd.example.test", "192.0.2.7")
    server = pldns(in_process=True, cache={"enabled": True})
    queries: dict[int, tuple[str, bytes]] = {}
    clients_ = [udp_socket() for _ in range(3)]
    try:
        for n in range(300):
            name = OWNED if n % 3 else "fwd.example.test"
            q = dns.message.make_query(name, "A", id=n)
            queries[n] = (name, q.to_wire())
        for n, (_, wire) in queries.items():
            clients_[n % 3].sendto(wire, server.addr)
        clients_[0].sendto(b"\x00\x01", server.addr)  # a runt: dropped, counted
        bad = bytearray(queries[1][1])
        bad[-5] = 0x3F  # the question's name runs past the end: FORMERR
        clients_[1].sendto(bytes(bad[:-4]), server.addr)
        replies: dict[int, dns.message.Message] = {}
        formerr = 0
        deadline = time.monotonic() + 10
        while len(replies) < len(queries) or not formerr:
            assert time.monotonic() < deadline, f"{len(replies)} of {len(queries)} answered"
            for sock in clients_:
                sock.setblocking(False)
                try:
                    wire = sock.recv(4096)
                except BlockingIOError:
                    continue
                if wire[3] & 0x0F == dns.rcode.FORMERR:
                    formerr += 1
                    continue
                msg = dns.message.from_wire(wire)
                assert msg.id not in replies, f"ID {msg.id} answered twice"
                replies[msg.id] = msg
            time.sleep(0.001)
        for n, msg in replies.items():
            name, _ = queries[n]
            assert msg.question[0].name.to_text() == name + "."
            want = set(OWNED_IPS) if name == OWNED else {"192.0.2.7"}
            assert clients.a_records(msg) == want
        assert formerr == 1
        assert server.call(lambda: server.stats.dropped["runt"]) == 1
        assert max(batched.batches) > 1, "queries waiting together are read together"
        assert max(batched.batches) <= batched.BATCH
        assert len(upstream.queries("fwd.example.test")) == 1, "the rest: cache or coalesced"
    finally:
        for sock in clients_:
            sock.close()


class LossyIo:
    """An _mmsg whose kernel takes nothing: every datagram is lost."""

    BATCH = 4

    def __init__(self, ready: list[tuple[bytes, str, bytes]]) -> None:
        self.ready = ready

    def recv(self, fd: int, count: int) -> list[tuple[bytes, str, bytes]]:
        got, self.ready = self.ready[:count], self.ready[count:]
        return got

    def send(self, fd: int, datas: list[bytes], addrs: list[bytes]) -> int:
        return len(datas)

    def sendto(self, fd: int, data: bytes, addr: bytes) -> bool:
        return False


def test_replies_the_kernel_does_not_take_are_counted_and_a_closed_listener_sends_nothing(
    pldns: Callable[..., Any],
) -> None:
    server = pldns(in_process=True)
    owned = dns.message.make_query(OWNED, "A").to_wire()
    ready = [(owned, "127.0.0.1", b"\x02\x00" + b"\x00" * 14)] * 10
    sock = udp_socket()
    listener = BatchUdpListener(server.app.frontend, sock, LossyIo(ready))

    def run() -> int:
        listener._readable()  # 10 ready, 4 per batch: three batches, each sent and lost
        listener._sender(b"")(b"late reply")  # a forwarded reply, lost too
        lost = int(server.stats.dropped["send"])
        listener.close()
        listener.close()  # twice is harmless
        listener._sender(b"")(b"after close")  # not sent, not counted
        listener._readable()
        return lost - int(server.stats.dropped["send"])

    try:
        assert server.call(lambda: server.stats.dropped["send"]) == 0
        assert server.call(run) == 0
        assert server.call(lambda: server.stats.dropped["send"]) == 11
        assert listener.fd == -1 and sock.fileno() == -1
    finally:
        sock.close()


class EndlessIo:
    """An _mmsg with `total` owned queries ready, then errors; its kernel takes no reply."""

    BATCH = 64

    def __init__(self, query: bytes, total: int) -> None:
        self.batch = [(query, "127.0.0.1", b"\x02\x00" + b"\x00" * 14)] * self.BATCH
        self.left = total
        self.errors = 0

    def recv(self, fd: int, count: int) -> list[tuple[bytes, str, bytes]]:
        if self.left <= 0:
            self.errors += 1
            raise OSError(12, "Cannot allocate memory")
        got = self.batch[: min(count, self.left)]
        self.left -= len(got)
        return got

    def send(self, fd: int, datas: list[bytes], addrs: list[bytes]) -> int:
        return len(datas)

    def sendto(self, fd: int, data: bytes, addr: bytes) -> bool:
        return False


def test_a_million_lost_replies_and_failed_reads_leave_nothing_behind(
    pldns: Callable[..., Any],
) -> None:
    """The long run of both failure paths: 10**6 replies the kernel refuses, then 10**6 reads
    that fail. Every loss is counted, nothing queues up, and the listener still reads after."""
    server = pldns(in_process=True)
    owned = dns.message.make_query(OWNED, "A").to_wire()
    io = EndlessIo(owned, 10**6)
    sock = udp_socket()
    listener = BatchUdpListener(server.app.frontend, sock, io)

    def run() -> tuple[int, int, int, int, int]:
        wakeups = 0
        while io.left > 0:
            listener._readable()  # at most ROUNDS batches per wake-up
            wakeups += 1
        failed_before = io.errors  # the last full batch is followed by one more read
        for _ in range(10**6):
            listener._readable()
        return (
            int(server.stats.dropped["send"]),
            wakeups,
            len(listener.datas) + len(listener.addrs),
            listener.fd,
            io.errors - failed_before,
        )

    try:
        lost, wakeups, queued, fd, failed = server.call(run, timeout=600)
        assert lost == 10**6, "every refused reply is counted"
        assert wakeups == -(-(10**6) // (listeners.ROUNDS * io.BATCH)), "bounded per wake-up"
        assert queued == 0, "nothing waits for a send that will not come"
        assert failed == 10**6 and fd >= 0, "failed reads are survived, the socket kept"
    finally:
        listener.close()
        sock.close()

"""DNS over TCP through pldns (RFC 7766): pipelining answered out of order, partial reads,
back-pressure, idle timeouts, the connection cap, and malformed frames.
"""

from __future__ import annotations

import random
import socket
import struct
import time

import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from tests.fakes import clients
from tests.fakes.clients import a_records, frame, make_query, recv_frame, wait_closed
from tests.fakes.proc import OWNED, OWNED_IPS

FORWARDED = "www.example.test"
SLOW = "slow.example.test"


def _ask(sock: socket.socket, query: dns.message.Message) -> dns.message.Message:
    sock.sendall(frame(query.to_wire()))
    reply = recv_frame(sock)
    assert reply is not None, "connection closed instead of answering"
    return dns.message.from_wire(reply)


def _connect_until_served(addr: tuple[str, int], timeout: float = 3.0) -> socket.socket:
    """A connection that gets an answer; retried while the server is still at its cap."""
    end = time.monotonic() + timeout
    while True:
        sock = clients.tcp_connect(addr)
        try:
            sock.sendall(frame(make_query(OWNED, "A").to_wire()))
            if recv_frame(sock) is not None:
                return sock
        except OSError:
            pass
        sock.close()
        if time.monotonic() > end:
            raise AssertionError("the server did not take a new connection")
        time.sleep(0.05)


def test_pipelined_queries_in_one_send_are_answered_out_of_order(pldns, upstream) -> None:
    upstream.answer(SLOW, "192.0.2.9", delay=1.0)
    upstream.answer(FORWARDED, "192.0.2.1")
    server = pldns(forward={"try_timeout": 2.0, "deadline": 3.0})
    queries = {
        1: make_query(SLOW, "A", id=1),
        2: make_query(OWNED, "A", id=2),
        3: make_query(OWNED, "AAAA", id=3),
        4: make_query(FORWARDED, "A", id=4),
    }
    with clients.tcp_connect(server.addr, timeout=5.0) as sock:
        sock.sendall(b"".join(frame(q.to_wire()) for q in queries.values()))
        replies = [recv_frame(sock) for _ in queries]
    assert all(r is not None for r in replies)
    msgs = [dns.message.from_wire(r) for r in replies]  # type: ignore[arg-type]
    order = [m.id for m in msgs]
    assert sorted(order) == [1, 2, 3, 4]
    assert order[-1] == 1, f"the slow forwarded answer must come last, got {order}"
    by_id = {m.id: m for m in msgs}
    for qid, query in queries.items():
        assert by_id[qid].question == query.question
    assert a_records(by_id[1]) == {"192.0.2.9"}
    assert a_records(by_id[2]) == set(OWNED_IPS)
    assert by_id[3].answer == [] and by_id[3].authority[0].rdtype == dns.rdatatype.SOA
    assert a_records(by_id[4]) == {"192.0.2.1"}


@pytest.mark.parametrize("max_pipelined", [2, 100])
def test_many_pipelined_queries_all_answered(pldns, upstream, max_pipelined) -> None:
    upstream.answer(FORWARDED, "192.0.2.1")
    server = pldns(tcp={"max_pipelined": max_pipelined})
    names = [OWNED, FORWARDED, "nx.example.test"]
    queries = [make_query(names[i % 3], "A", id=1000 + i) for i in range(60)]
    with clients.tcp_connect(server.addr, timeout=5.0) as sock:
        sock.sendall(b"".join(frame(q.to_wire()) for q in queries))
        replies = [recv_frame(sock) for _ in queries]
    msgs = {m.id: m for m in (dns.message.from_wire(r) for r in replies if r is not None)}
    assert sorted(msgs) == [q.id for q in queries]
    for q in queries:
        assert msgs[q.id].question == q.question


def test_partial_reads_one_byte_at_a_time(pldns, upstream) -> None:
    upstream.answer(FORWARDED, "192.0.2.1")
    server = pldns()
    first = frame(make_query(OWNED, "A", id=7).to_wire())
    second = frame(make_query(FORWARDED, "A", id=8).to_wire())
    with clients.tcp_connect(server.addr) as sock:
        for byte in first:
            sock.send(bytes([byte]))
            time.sleep(0.005)
        reply = recv_frame(sock)
        assert reply is not None
        msg = dns.message.from_wire(reply)
        assert msg.id == 7 and a_records(msg) == set(OWNED_IPS)
        # The length prefix and the start of the message in one segment, the rest later.
        sock.send(second[:3])
        time.sleep(0.05)
        sock.send(second[3:])
        reply = recv_frame(sock)
        assert reply is not None
        msg = dns.message.from_wire(reply)
        assert msg.id == 8 and a_records(msg) == {"192.0.2.1"}


def test_idle_connection_is_closed_after_idle_timeout(pldns) -> None:
    # Lower bound: not before the idle timeout (load only delays). Upper bound: well before
    # the default 10 s a forgotten setting would give; the gap is room for a loaded machine.
    server = pldns(tcp={"idle_timeout": 0.5})
    with clients.tcp_connect(server.addr) as sock:
        assert a_records(_ask(sock, make_query(OWNED, "A"))) == set(OWNED_IPS)
        took = wait_closed(sock, timeout=9.0)
    assert took is not None, "an idle connection must be closed"
    assert 0.3 < took < 6.0
    with clients.tcp_connect(server.addr) as sock:  # a silent one is closed too
        took = wait_closed(sock, timeout=9.0)
    assert took is not None and took < 6.0


def test_connection_with_a_pending_query_outlives_idle_timeout(pldns, upstream) -> None:
    upstream.answer(SLOW, "192.0.2.9", delay=1.2)
    server = pldns(tcp={"idle_timeout": 0.4}, forward={"try_timeout": 2.0, "deadline": 3.0})
    with clients.tcp_connect(server.addr, timeout=5.0) as sock:
        start = time.monotonic()
        msg = _ask(sock, make_query(SLOW, "A"))
        assert a_records(msg) == {"192.0.2.9"}
        assert time.monotonic() - start > 1.0
        assert wait_closed(sock, timeout=5.0) is not None


def test_connection_cap_closes_the_extra_connection(pldns, upstream) -> None:
    # Both admitted connections are busy (a query waiting upstream): a third is closed.
    upstream.answer(SLOW, "192.0.2.9", delay=2.0)
    server = pldns(tcp={"max_connections": 2}, forward={"try_timeout": 3.0, "deadline": 4.0})
    first = _connect_until_served(server.addr)
    second = _connect_until_served(server.addr)
    try:
        for sock in (first, second):
            sock.sendall(frame(make_query(SLOW, "A").to_wire()))
        time.sleep(0.3)
        with clients.tcp_connect(server.addr) as third:
            took = wait_closed(third, timeout=3.0)
            assert took is not None, "a connection over the cap must be closed"
        # The two admitted connections still work.
        for sock in (first, second):
            sock.settimeout(5.0)
            reply = recv_frame(sock)
            assert reply is not None and a_records(dns.message.from_wire(reply)) == {"192.0.2.9"}
        first.close()
        # A slot is free again once the server has seen the close.
        with _connect_until_served(server.addr) as again:
            assert a_records(_ask(again, make_query(OWNED, "A"))) == set(OWNED_IPS)
    finally:
        first.close()
        second.close()


def test_at_the_cap_a_new_client_evicts_the_longest_idle(pldns) -> None:
    server = pldns(tcp={"max_connections": 2, "idle_timeout": 30.0}, in_process=True)
    first = _connect_until_served(server.addr)
    time.sleep(0.05)
    second = _connect_until_served(server.addr)
    try:
        with _connect_until_served(server.addr) as third:  # at once: it evicts `first`
            assert a_records(_ask(third, make_query(OWNED, "A"))) == set(OWNED_IPS)
            assert wait_closed(first, timeout=2.0) is not None, "the longest idle one goes"
            assert a_records(_ask(second, make_query(OWNED, "A"))) == set(OWNED_IPS)
        assert server.call(lambda: server.stats.tcp_closed["evicted"]) == 1
        assert server.call(lambda: server.stats.tcp_rejected) == 0
    finally:
        first.close()
        second.close()


def test_tcp_junk_frames_get_formerr_or_nothing(pldns) -> None:
    server = pldns()
    rng = random.Random(7766)
    junk = [bytearray(rng.randbytes(n)) for n in (13, 40, 300, 65535)]
    for j in junk:
        j[2] &= 0x07  # QR=0, opcode QUERY: a reply (FORMERR) is allowed
    response = dns.message.make_response(make_query(OWNED, "A")).to_wire()  # QR=1: dropped
    frames = [b"", b"\x01\x02\x03", response, *map(bytes, junk)]
    with clients.tcp_connect(server.addr, timeout=10.0) as sock:
        # Each junk frame is followed by a probe (an owned query with its own ID): replies
        # come in order for local answers, so what arrives before the probe's answer is the
        # junk's reply, if any. No wait on a timer decides "no reply" (a loaded machine
        # would make a late FORMERR look like silence, then like the next frame's reply).
        for i, body in enumerate(frames):
            probe = make_query(OWNED, "A", id=0xF000 + i)
            sock.sendall(frame(body) + frame(probe.to_wire()))
            before = []
            while True:
                reply = recv_frame(sock)
                assert reply is not None, "the connection closed"
                if reply[:2] == probe.id.to_bytes(2, "big") and reply[2] & 0x80:
                    break
                before.append(reply)
            assert len(before) <= 1, before
            for reply in before:
                assert reply[:2] == body[:2] and reply[2] & 0x80
                assert reply[3] & 0x0F == dns.rcode.FORMERR, body[:16].hex()
        assert a_records(_ask(sock, make_query(OWNED, "A"))) == set(OWNED_IPS)


def test_frame_shorter_than_its_length_prefix_then_close(pldns) -> None:
    server = pldns()
    with clients.tcp_connect(server.addr) as sock:
        sock.sendall(b"\x01\x00" + b"\x12\x34\x01\x00\x00\x01" + b"\x00" * 4)  # 10 of 256
        sock.shutdown(socket.SHUT_WR)
        assert wait_closed(sock, timeout=3.0) is not None
    with clients.tcp_connect(server.addr) as sock:  # a half frame, then a hard close (RST)
        sock.sendall(b"\xff\xff" + b"\x00" * 100)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with clients.tcp_connect(server.addr) as sock:
        assert a_records(_ask(sock, make_query(OWNED, "A"))) == set(OWNED_IPS)
    assert a_records(clients.udp(server.addr, OWNED)) == set(OWNED_IPS)


def test_max_pipelined_bounds_the_queries_in_progress_per_connection(pldns, upstream) -> None:
    upstream.answer(SLOW, "192.0.2.9", delay=0.4)
    server = pldns(
        tcp={"max_pipelined": 2},
        forward={"try_timeout": 2.0, "deadline": 3.0},
        cache={"enabled": False},  # coalescing would make the six queries one upstream query
    )
    queries = [make_query(SLOW, "A", id=100 + i) for i in range(6)]
    with clients.tcp_connect(server.addr, timeout=5.0) as sock:
        sock.sendall(b"".join(frame(q.to_wire()) for q in queries))  # all in one segment
        replies = [recv_frame(sock) for _ in queries]
    assert sorted(dns.message.from_wire(r).id for r in replies if r) == [q.id for q in queries]
    arrivals = [r.at for r in upstream.queries(SLOW)]
    assert len(arrivals) == 6
    early = [t for t in arrivals if t - arrivals[0] < 0.25]
    assert len(early) <= 2, "more than max_pipelined queries of one connection in progress"

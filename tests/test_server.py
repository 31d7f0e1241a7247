"""pldns as a server: owned names over UDP/TCP with real clients, malformed input, header
rules, access control, the IPv6 listener, and a taken listen port. Real pldns processes on
loopback; see conftest.py for the fixtures.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest

from pldns.dns.acl import Acl
from pldns.dns.answer import Resolver
from pldns.dns.listeners import Listener
from pldns.dns.pipeline import Frontend
from pldns.dns.settings import HostPort
from pldns.dns.stats import Stats
from pldns.dns.table import RecordTable
from tests.fakes import clients
from tests.fakes.clients import a_records, make_query, raw_udp
from tests.fakes.proc import OWNED, OWNED_2, OWNED_IPS, PldnsProcess, base_config, free_port

FORWARDED = "www.example.test"


def _header(reply: bytes) -> tuple[int, int, int]:
    """(id, QR bit, rcode) of a raw reply."""
    return int.from_bytes(reply[:2], "big"), reply[2] >> 7, reply[3] & 0x0F


def _assert_alive(addr: tuple[str, int]) -> None:
    reply = clients.udp(addr, OWNED)
    assert a_records(reply) == set(OWNED_IPS)


# --- owned names ----------------------------------------------------------------------
@pytest.mark.parametrize("send", [clients.udp, clients.tcp], ids=["udp", "tcp"])
def test_owned_a_answers_the_configured_ips(pldns, send) -> None:
    server = pldns()
    for name in (OWNED, OWNED_2):
        reply = send(server.addr, name, "A")
        assert reply.rcode() == dns.rcode.NOERROR
        assert reply.flags & dns.flags.AA and reply.flags & dns.flags.RA
        assert a_records(reply) == set(OWNED_IPS)
        assert all(rrset.ttl <= 30 for rrset in reply.answer)


@pytest.mark.parametrize("send", [clients.udp, clients.tcp], ids=["udp", "tcp"])
@pytest.mark.parametrize("rdtype", ["AAAA", "HTTPS", "TXT", "MX"])
def test_owned_other_types_are_nodata_with_soa(pldns, upstream, send, rdtype) -> None:
    server = pldns()
    reply = send(server.addr, OWNED, rdtype)
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.answer == []
    assert [r.rdtype for r in reply.authority] == [dns.rdatatype.SOA]
    assert reply.authority[0].name == dns.name.from_text(OWNED)
    assert upstream.queries() == [], "an owned name must never be forwarded"


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_owned_name_case_is_echoed(pldns, tcp) -> None:
    server = pldns()
    spelled = "EcI-VpC.Cn-HangZhou.AliYunCS.COM"
    query = make_query(spelled, "A")
    wire = query.to_wire()
    if tcp:
        with clients.tcp_connect(server.addr) as sock:
            sock.sendall(clients.frame(wire))
            reply = clients.recv_frame(sock)
    else:
        reply = raw_udp(server.addr, wire)
    assert reply is not None
    assert reply[12 : len(wire)] == wire[12:], "the question must come back byte for byte"
    msg = dns.message.from_wire(reply)
    assert {r.name.to_text(omit_final_dot=True) for r in msg.answer} == {spelled}
    assert a_records(msg) == set(OWNED_IPS)


@pytest.mark.parametrize("tool", ["dig", "kdig"])
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_owned_names_with_dig_and_kdig(pldns, tool, transport) -> None:
    if not clients.have(tool):
        pytest.skip(f"{tool} is not installed")
    server = pldns()
    run = clients.dig if tool == "dig" else clients.kdig
    extra = ["+tcp"] if transport == "tcp" else []
    got = run(server.addr, *extra, OWNED, "A")
    assert got.status == "NOERROR", got.text
    assert {"qr", "aa", "ra"} <= got.flags, got.text
    assert set(got.rdata("A")) == set(OWNED_IPS), got.text
    assert got.transport == transport.upper(), got.text
    got = run(server.addr, *extra, OWNED, "AAAA")
    assert got.status == "NOERROR", got.text
    assert got.answer == [], got.text
    assert [t for _, t, _ in got.authority] == ["SOA"], got.text


# --- malformed input over UDP, and header rules ---------------------------------------
def test_udp_junk_gets_formerr_or_nothing_and_server_lives(pldns) -> None:
    server = pldns()
    rng = random.Random(20240611)
    header_only = bytes.fromhex("abcd 0100 0000 0000 0000 0000")  # QDCOUNT 0
    truncated_question = bytes.fromhex("abce 0100 0001 0000 0000 0000") + b"\x07example"
    cases: list[tuple[bytes, set[int] | None]] = [
        (b"\x01\x02\x03\x04\x05", None),  # a runt: dropped
        (header_only, {dns.rcode.FORMERR}),
        (truncated_question, {dns.rcode.FORMERR}),
        (bytes.fromhex("abcf 0100 0001 0000 0000 0000") + b"\xc0\x0c\x00\x01\x00\x01", {1}),
    ]
    for _ in range(20):  # random junk with QR=0 and opcode QUERY, so a reply is allowed
        junk = bytearray(rng.randbytes(rng.randrange(12, 600)))
        junk[2] &= 0x07
        cases.append((bytes(junk), {dns.rcode.FORMERR, dns.rcode.NXDOMAIN, dns.rcode.NOERROR}))
    big = bytearray(rng.randbytes(65507))  # the largest UDP datagram over IPv4
    big[2] &= 0x07
    cases.append((bytes(big), {dns.rcode.FORMERR}))
    for packet, allowed in cases:
        reply = raw_udp(server.addr, packet, timeout=0.5)
        if allowed is None:
            assert reply is None
        elif reply is not None:
            qid, qr, rcode = _header(reply)
            assert qid == int.from_bytes(packet[:2], "big") and qr == 1
            assert rcode in allowed, (packet[:16].hex(), rcode)
    # The fixed cases must have got their FORMERR (not silence).
    for packet, _ in cases[1:4]:
        reply = raw_udp(server.addr, packet, timeout=1.0)
        assert reply is not None and _header(reply)[2] == dns.rcode.FORMERR
    _assert_alive(server.addr)


def test_a_response_sent_to_the_server_gets_no_reply(pldns, upstream) -> None:
    server = pldns()
    query = make_query(OWNED, "A")
    query.flags |= dns.flags.QR
    assert raw_udp(server.addr, query.to_wire(), timeout=0.5) is None
    response = dns.message.make_response(make_query(FORWARDED, "A"))
    assert raw_udp(server.addr, response.to_wire(), timeout=0.5) is None
    assert upstream.queries() == []
    _assert_alive(server.addr)


@pytest.mark.parametrize("qdcount", [0, 2])
def test_qdcount_other_than_one_is_formerr(pldns, qdcount) -> None:
    server = pldns()
    wire = make_query(OWNED, "A").to_wire()
    question = wire[12:]
    wire = wire[:4] + qdcount.to_bytes(2, "big") + wire[6:12] + question * qdcount
    reply = raw_udp(server.addr, wire)
    assert reply is not None
    assert _header(reply) == (int.from_bytes(wire[:2], "big"), 1, dns.rcode.FORMERR)


@pytest.mark.parametrize("opcode", [dns.opcode.NOTIFY, dns.opcode.UPDATE, dns.opcode.IQUERY])
def test_opcode_other_than_query_is_notimp(pldns, upstream, opcode) -> None:
    server = pldns()
    query = make_query(OWNED, "SOA")
    query.set_opcode(opcode)
    reply = raw_udp(server.addr, query.to_wire())
    assert reply is not None
    msg = dns.message.from_wire(reply)
    assert msg.rcode() == dns.rcode.NOTIMP and msg.opcode() == opcode
    assert upstream.queries() == []


@pytest.mark.parametrize("name", [OWNED, FORWARDED])
def test_edns_version_1_is_badvers(pldns, upstream, name) -> None:
    server = pldns()
    query = make_query(name, "A", use_edns=1)
    reply = clients.udp(server.addr, query)
    assert reply.rcode() == dns.rcode.BADVERS
    assert reply.edns == 0, "BADVERS carries our OPT, version 0 (RFC 6891 §6.1.3)"
    assert reply.answer == []
    assert upstream.queries() == []


# --- access control -------------------------------------------------------------------
def _closed_at_accept(server) -> None:
    """TCP from a client outside `allow` is closed at accept: no reply, no slot held."""
    with clients.tcp_connect(server.addr) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(clients.frame(make_query(OWNED, "A").to_wire()))
        took = clients.wait_closed(sock, timeout=2.0)
    assert took is not None and took < 1.0, "a denied client's connection must close at once"


def test_client_outside_allow_is_refused(pldns, upstream) -> None:
    upstream.answer(FORWARDED, "192.0.2.1")
    # On 127.0.0.2: the client's source is 127.0.0.1 (the loopback route's source), not one
    # of pldns's listen addresses (those are always allowed: tests/test_node_local.py).
    server = pldns(allow=["10.0.0.0/8"], host="127.0.0.2", in_process=True)
    for name in (OWNED, FORWARDED):
        reply = clients.udp(server.addr, name, "A")
        assert reply.rcode() == dns.rcode.REFUSED
        assert reply.answer == []
    _closed_at_accept(server)
    assert server.call(lambda: server.stats.tcp_closed["acl"]) == 1
    assert server.call(lambda: len(server.app.connections)) == 0
    assert upstream.queries() == [], "a refused client's query must not be forwarded"


def test_client_outside_allow_with_deny_drop_gets_nothing(pldns, upstream) -> None:
    upstream.answer(FORWARDED, "192.0.2.1")
    server = pldns(allow=["10.0.0.0/8"], deny="drop", host="127.0.0.2")
    for name in (OWNED, FORWARDED):
        with pytest.raises(dns.exception.Timeout):
            clients.udp(server.addr, name, "A", timeout=0.5)
    _closed_at_accept(server)
    assert upstream.queries() == []


# --- listeners ------------------------------------------------------------------------
def test_ipv6_listener_answers_udp_and_tcp(pldns, upstream, v6_loopback) -> None:
    upstream.answer(FORWARDED, "192.0.2.1")
    server = pldns(host="::1")
    assert server.addr[0] == "::1"
    for send in (clients.udp, clients.tcp):
        assert a_records(send(server.addr, OWNED, "A")) == set(OWNED_IPS)
        assert a_records(send(server.addr, FORWARDED, "A")) == {"192.0.2.1"}


@pytest.mark.parametrize("kind", ["udp", "tcp"])
def test_listen_port_taken_exits_nonzero_with_a_clear_message(tmp_path, upstream, kind) -> None:
    port = free_port()
    if kind == "udp":
        holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    else:
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with holder:
        holder.bind(("127.0.0.1", port))
        if kind == "tcp":
            holder.listen(1)
        config = base_config("127.0.0.1", port, [upstream.address])
        rc, log = PldnsProcess(config, tmp_path).run_to_exit()
    assert rc != 0, log
    assert "Traceback" not in log, log
    assert "cannot listen" in log and "in use" in log, log


def test_listener_that_cannot_bind_tcp_releases_its_udp_port() -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen(1)
        listener = Listener(HostPort("127.0.0.1", port))
        stats = Stats()
        frontend = Frontend(
            Resolver(RecordTable(), "forward", stats), None, Acl([]), "refuse", stats, 1
        )  # type: ignore[arg-type]  # it never forwards: the listener does not start
        with pytest.raises(OSError):
            asyncio.run(listener.start(frontend, set()))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", port))  # the UDP half must have been closed again

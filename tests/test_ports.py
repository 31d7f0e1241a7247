"""tests/fakes/ports.py: the ports tests start servers on come from below the ephemeral range
and are free for both TCP and UDP (a port-0 pick raced pldns's own upstream sockets)."""

from __future__ import annotations

import socket

import pytest

from tests.fakes import ports
from tests.fakes.proc import free_port


def ephemeral() -> range:
    with open(ports.EPHEMERAL_RANGE) as f:
        first, last = (int(x) for x in f.read().split())
    return range(first, last + 1)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_free_port_is_below_the_ephemeral_range_and_free_for_tcp_and_udp(host: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    picked = {free_port(host) for _ in range(20)}
    assert len(picked) > 1, "picked at random, so parallel runs stay apart"
    for port in picked:
        assert port not in ephemeral() and port in ports.low_ports()
        with socket.socket(family, socket.SOCK_STREAM) as tcp:
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((host, port))
            with socket.socket(family, socket.SOCK_DGRAM) as udp:
                udp.bind((host, port))


@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_DGRAM], ids=["tcp", "udp"])
def test_a_port_taken_for_one_protocol_is_never_picked(monkeypatch, kind: int) -> None:
    with socket.socket(socket.AF_INET, kind) as busy:
        busy.bind(("127.0.0.1", free_port()))
        taken = busy.getsockname()[1]
        other = free_port()
        monkeypatch.setattr(
            ports,
            "low_ports",
            lambda: range(min(taken, other), max(taken, other) + 1, abs(taken - other)),
        )
        assert {free_port() for _ in range(30)} == {other}

"""Loopback ports for a server a test (or scripts/torture) starts later: picked below the
kernel's ephemeral range, at random, and checked free for TCP and UDP.

Why not port 0: a port the kernel hands out for a bind to port 0 comes from the ephemeral
range (/proc/sys/net/ipv4/ip_local_port_range, 32768-60999 by default), the same range every
socket bound or connected without a port draws from, pldns's own upstream sockets included.
Between the pick (bind, read the port, close) and the server's bind, any of those can take it
("Address already in use" under load). Below the range only an explicit bind takes a port, so
the pick holds until the server binds it; the random choice keeps parallel runs apart.
"""

from __future__ import annotations

import random
import socket

EPHEMERAL_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"
LOW_SPAN = 12000  # how many ports below the ephemeral range to pick from
TRIES = 1000


def low_ports() -> range:
    """The ports below the ephemeral range to pick from (20768-32767 with Linux defaults)."""
    try:
        with open(EPHEMERAL_RANGE) as f:
            first = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        first = 32768
    return range(max(1024, first - LOW_SPAN), max(1025, first))


def bind_pair(host: str = "127.0.0.1") -> tuple[socket.socket, socket.socket]:
    """A TCP and a UDP socket bound to the same free port below the ephemeral range."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    ports = low_ports()
    for _ in range(TRIES):
        port = random.choice(ports)
        tcp = socket.socket(family, socket.SOCK_STREAM)
        udp = socket.socket(family, socket.SOCK_DGRAM)
        try:
            # As a listener binds it (asyncio sets SO_REUSEADDR): a port whose last
            # connection is in TIME_WAIT is free for the server, so it is free here too.
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((host, port))
            udp.bind((host, port))
            return tcp, udp
        except OSError:
            tcp.close()
            udp.close()
    raise OSError(f"no free TCP+UDP port on {host} in {ports.start}-{ports.stop - 1}")


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for TCP and UDP on `host` now, for a server to bind soon (see above)."""
    tcp, udp = bind_pair(host)
    port = int(tcp.getsockname()[1])
    tcp.close()
    udp.close()
    return port

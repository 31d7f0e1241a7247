"""Clients for tests: dnspython queries, raw UDP/TCP sockets, `dig` and `kdig`.

Every call has a short fixed timeout; `addr` is a (host, port) pair.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field

import dns.message
import dns.query
import dns.rdatatype
import dns.rrset

Addr = tuple[str, int]
TIMEOUT = 2.0


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def make_query(name: str, rdtype: str | int = "A", **kwargs: object) -> dns.message.Message:
    return dns.message.make_query(name, rdtype, **kwargs)  # type: ignore[arg-type]


def udp(
    addr: Addr, query: dns.message.Message | str, rdtype: str = "A", timeout: float = TIMEOUT
) -> dns.message.Message:
    """Send over UDP with dnspython; raises dns.exception.Timeout when no answer comes."""
    q = make_query(query, rdtype) if isinstance(query, str) else query
    return dns.query.udp(q, addr[0], port=addr[1], timeout=timeout)


def tcp(
    addr: Addr, query: dns.message.Message | str, rdtype: str = "A", timeout: float = TIMEOUT
) -> dns.message.Message:
    q = make_query(query, rdtype) if isinstance(query, str) else query
    return dns.query.tcp(q, addr[0], port=addr[1], timeout=timeout)


def a_records(msg: dns.message.Message) -> set[str]:
    return {rd.to_text() for rrset in msg.answer if rrset.rdtype == dns.rdatatype.A for rd in rrset}


def raw_udp(addr: Addr, wire: bytes, timeout: float = 1.0) -> bytes | None:
    """Send one datagram from a fresh socket; the first reply, or None after `timeout`."""
    with socket.socket(_family(addr[0]), socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.connect(addr)
        sock.send(wire)
        try:
            return sock.recv(65535)
        except (TimeoutError, ConnectionRefusedError):
            return None


def tcp_connect(addr: Addr, timeout: float = TIMEOUT) -> socket.socket:
    sock = socket.create_connection(addr, timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def frame(wire: bytes) -> bytes:
    """RFC 1035 §4.2.2 / RFC 7766 length prefix."""
    return len(wire).to_bytes(2, "big") + wire


def recv_exact(sock: socket.socket, n: int) -> bytes | None:
    """Read exactly n bytes; None if the peer closed first (EOF or reset)."""
    buf = b""
    while len(buf) < n:
        try:
            chunk = sock.recv(n - len(buf))
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        buf += chunk
    return buf


def recv_frame(sock: socket.socket) -> bytes | None:
    """One length-prefixed message; None on EOF. Raises TimeoutError per the socket timeout."""
    head = recv_exact(sock, 2)
    if head is None:
        return None
    return recv_exact(sock, int.from_bytes(head, "big"))


def wait_closed(sock: socket.socket, timeout: float) -> float | None:
    """Seconds until the peer closes the connection (EOF/reset), or None if it stays open."""
    start = time.monotonic()
    sock.settimeout(timeout)
    try:
        data = sock.recv(1)
    except TimeoutError:
        return None
    except ConnectionResetError:
        data = b""
    if data:
        raise AssertionError(f"unexpected data {data!r}")
    return time.monotonic() - start


# --- dig and kdig -------------------------------------------------------------------
@dataclass
class ToolResult:
    """What dig or kdig printed, parsed enough for assertions."""

    text: str
    status: str = ""
    flags: set[str] = field(default_factory=set)
    answer: list[tuple[str, str, str]] = field(default_factory=list)  # (name, type, rdata)
    authority: list[tuple[str, str, str]] = field(default_factory=list)
    transport: str = ""  # "UDP" | "TCP", of the last exchange

    def rdata(self, rdtype: str) -> list[str]:
        return [r for _, t, r in self.answer if t == rdtype]


_SECTION = re.compile(r"^;; (ANSWER|AUTHORITY|ADDITIONAL|QUESTION) SECTION:")


def parse_tool_output(text: str) -> ToolResult:
    result = ToolResult(text)
    if m := re.search(r"status: (\w+)", text):
        result.status = m.group(1)
    if m := re.search(r";; [Ff]lags: ([^;]*);", text):
        result.flags = set(m.group(1).split())
    if transports := re.findall(r"\((UDP|TCP)\)", text):
        result.transport = transports[-1]
    section = None
    for line in text.splitlines():
        if m := _SECTION.match(line):
            section = m.group(1)
            continue
        if not line.strip() or line.startswith(";"):
            if not line.strip():
                section = None
            continue
        fields = line.split(None, 4)
        if section in ("ANSWER", "AUTHORITY") and len(fields) == 5:
            record = (fields[0], fields[3], fields[4].strip())
            (result.answer if section == "ANSWER" else result.authority).append(record)
    return result


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def dig(addr: Addr, *args: str, timeout: float = 15.0) -> ToolResult:
    """`dig @host -p port ARGS` with +time=2 +tries=1 (each try bounded; dig may add a TCP retry)."""
    cmd = ["dig", "+time=2", "+tries=1", "-p", str(addr[1]), f"@{addr[0]}", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    return parse_tool_output(out.stdout + out.stderr)


def kdig(addr: Addr, *args: str, timeout: float = 15.0) -> ToolResult:
    """`kdig @host -p port ARGS` with +time=2 +retry=0."""
    cmd = ["kdig", "+time=2", "+retry=0", "-p", str(addr[1]), f"@{addr[0]}", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    return parse_tool_output(out.stdout + out.stderr)


def rrsets_text(rrsets: list[dns.rrset.RRset]) -> list[str]:
    """A section as sorted text lines, for comparing two messages' sections."""
    return sorted(line for rrset in rrsets for line in rrset.to_text().splitlines())

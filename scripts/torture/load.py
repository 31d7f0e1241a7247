"""Client load for the torture harness: raw-bytes queries, steady and flat-out UDP load."""

from __future__ import annotations

import select
import socket
import time
from collections import Counter
from dataclasses import dataclass, field


def encode(name: str) -> bytes:
    return b"".join(bytes((len(p),)) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"


def query(name: str, qid: int, qtype: int = 1, edns: bool = True) -> bytes:
    head = (
        qid.to_bytes(2, "big")
        + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00"
        + (b"\x01" if edns else b"\x00")
    )
    opt = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00" if edns else b""
    return head + encode(name) + qtype.to_bytes(2, "big") + b"\x00\x01" + opt


def owned_query(name: str, qid: int) -> bytes:
    return query(name, qid, edns=False)


def tcp_ask(addr: tuple[str, int], wire: bytes, timeout: float) -> bool:
    """One query over a fresh TCP connection, retried until `timeout`; True if answered."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(addr, timeout=max(0.1, end - time.monotonic())) as s:
                s.sendall(len(wire).to_bytes(2, "big") + wire)
                head = s.recv(2)
                if len(head) == 2:
                    size = int.from_bytes(head, "big")
                    body = b""
                    while len(body) < size:
                        chunk = s.recv(size - len(body))
                        if not chunk:
                            break
                        body += chunk
                    if len(body) == size and body[:2] == wire[:2]:
                        return True
        except OSError:
            time.sleep(0.05)
    return False


@dataclass
class Result:
    sent: int = 0
    answered: int = 0  # replies of any RCODE
    rcodes: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)  # seconds after the start, per latency
    replies: list[bytes] = field(default_factory=list)


class UdpLoad:
    """Queries to one server from a few sockets; IDs are unique per socket while in flight."""

    def __init__(self, addr: tuple[str, int], sockets: int = 8) -> None:
        self.addr = addr
        self.socks = []
        for _ in range(sockets):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            s.setblocking(False)
            s.connect(addr)
            self.socks.append(s)

    def one(self, name: str, timeout: float) -> float | None:
        """Latency of one query answered NOERROR, or None."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            start = time.monotonic()
            s.sendto(query(name, 777), self.addr)
            try:
                data = s.recv(4096)
            except OSError:
                return None
            if data[:2] == (777).to_bytes(2, "big") and data[3] & 0x0F == 0:
                return time.monotonic() - start
            return None

    def blast(self, seconds: float, names: int) -> tuple[int, int]:
        """As fast as this process can send, for `seconds`; (sent, replies seen)."""
        sent = got = 0
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            for _ in range(256):
                s = self.socks[i % len(self.socks)]
                try:
                    s.send(query(f"n{i % names}.example.test", i & 0xFFFF))
                    sent += 1
                except (BlockingIOError, ConnectionRefusedError):
                    pass
                i += 1
            got += sum(drain(s) for s in self.socks)
        time.sleep(0.2)
        got += sum(drain(s) for s in self.socks)
        return sent, got

    def steady(
        self, seconds: float, qps: int, names: int = 1000, collect: bool = False, wait: float = 4.0
    ) -> Result:
        """`qps` queries a second for `seconds`; then up to `wait` s for the last replies."""
        res = Result()
        sent_at: dict[tuple[int, int], float] = {}
        start = time.monotonic()
        total = int(seconds * qps)
        n = 0
        while True:
            now = time.monotonic()
            due = min(total, int((now - start) * qps) + 1)
            while n < due:
                k = n % len(self.socks)
                qid = (n // len(self.socks)) & 0xFFFF
                try:
                    self.socks[k].send(query(f"s{n % names}.example.test", qid))
                    sent_at[(k, qid)] = time.monotonic()
                    res.sent += 1
                except (BlockingIOError, ConnectionRefusedError):
                    pass
                n += 1
            if n >= total and (not sent_at or now > start + seconds + wait):
                break
            ready, _, _ = select.select(self.socks, [], [], 0.002)
            for s in ready:
                k = self.socks.index(s)
                while True:
                    try:
                        data = s.recv(65535)
                    except (BlockingIOError, ConnectionRefusedError):
                        break
                    t = sent_at.pop((k, (data[0] << 8) | data[1]), None)
                    if t is None:
                        continue
                    res.answered += 1
                    res.rcodes[data[3] & 0x0F] += 1
                    res.latencies.append(time.monotonic() - t)
                    res.sent_at.append(t - start)
                    if collect:
                        res.replies.append(data)
        return res


def drain(sock: socket.socket) -> int:
    """Read every datagram waiting on a non-blocking socket; how many there were."""
    n = 0
    while True:
        try:
            sock.recv(65535)
            n += 1
        except OSError:  # BlockingIOError: nothing left; ConnectionRefusedError: ICMP
            return n

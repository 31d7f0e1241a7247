#!/usr/bin/env python3
"""What one query costs pldns in Python, without the kernel: time, calls, objects.

    taskset -c 0 python3 bench/querycost.py            # PYTHONPATH=. from a clone

The real listener and forwarder objects, driven by hand: a query goes into
`UdpListener.datagram_received` with a fake client transport; a forwarded query's upstream
packet is caught on a fake channel transport and answered by calling the channel's
`datagram_received`, as the event loop would. Reported per query: the wall time of the
Python part (best of 5 runs), the Python function calls and C calls (sys.setprofile), and
the objects allocated (gc-tracked objects that became garbage: gc.get_count with the
collector off, over a run). Sockets, syscalls and wake-ups are not in these figures: see
the profile section of the README for the whole picture under load.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pldns.config import parse_config
from pldns.dns.listeners import UdpListener
from pldns.workers import PoolApp  # noqa: F401  (imports everything serve imports)

OWNED = "ecs-vpc.cn-hangzhou.aliyuncs.com"
N = 20_000


def query(name: str, qid: int = 0x1234) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return (
        qid.to_bytes(2, "big")
        + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
        + labels
        + (b"\x00\x00\x01\x00\x01")
    )


def answer(packet: bytes) -> bytes:
    """The upstream's reply to `packet`: its ID and question, one A record."""
    qend = len(packet)
    return (
        packet[:2]
        + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00"
        + packet[12:qend]
        + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x0e\x10\x00\x04\xc0\x00\x02\x01"
    )


class ClientTransport:
    def __init__(self) -> None:
        self.sent = 0

    def sendto(self, data: bytes, addr: Any = None) -> None:
        self.sent += 1


class UpstreamTransport:
    def __init__(self) -> None:
        self.last = b""

    def sendto(self, data: bytes, addr: Any = None) -> None:
        self.last = data

    def close(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False


async def build(cache: bool) -> Any:
    from pldns.app import App

    config = parse_config(
        {
            "region": "cn-hangzhou",
            "listen": ["127.0.0.1:1"],
            "upstreams": ["127.0.0.1:2"],
            "http": {"listen": "off"},
            "cache": {"enabled": cache},
            "services": {"s0": {"domains": [OWNED], "static": ["10.0.1.5", "10.0.2.5"]}},
        }
    )
    app = App(config)
    fwd = app.forwarder
    up = fwd.upstreams[0]
    fwd._loop = asyncio.get_running_loop()
    from pldns.dns.upstream import Channel

    for _ in range(config.forward.udp_sockets):
        ch = Channel(fwd, 10**9)
        ch.connection_made(UpstreamTransport())  # type: ignore[arg-type]
        up.channels.append(ch)
    listener = UdpListener(app.frontend)
    client = ClientTransport()
    listener.connection_made(client)  # type: ignore[arg-type]
    return app, listener, client


def owned_run(listener: UdpListener, n: int) -> None:
    q = query(OWNED)
    addr = ("127.0.0.1", 40000)
    for _ in range(n):
        listener.datagram_received(q, addr)


def forward_run(app: Any, listener: UdpListener, n: int, names: list[bytes]) -> None:
    addr = ("127.0.0.1", 40000)
    channels = app.forwarder.upstreams[0].channels
    for i in range(n):
        listener.datagram_received(names[i], addr)
        for ch in channels:
            sent = ch.transport.last
            if sent:
                ch.transport.last = b""
                ch.datagram_received(answer(sent), None)


def measure(label: str, run: Any, n: int) -> None:
    best = min(_timed(run, n) for _ in range(5))
    calls = {"py": 0, "c": 0}

    def prof(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            calls["py"] += 1
        elif event == "c_call":
            calls["c"] += 1

    m = 2000
    sys.setprofile(prof)
    run(m)
    sys.setprofile(None)
    gc.collect()
    gc.disable()
    before = gc.get_count()[0]
    run(m)
    tracked = gc.get_count()[0] - before
    gc.enable()
    print(
        f"{label:28s} {best / n * 1e6:6.2f} us/query  "
        f"{calls['py'] / m:5.1f} Python calls  {calls['c'] / m:5.1f} C calls  "
        f"{tracked / m:5.1f} gc objects kept/query"
    )


def _timed(run: Any, n: int) -> float:
    start = time.perf_counter()
    run(n)
    return time.perf_counter() - start


async def main() -> None:
    for cache in (False, True):
        app, listener, client = await build(cache)
        tag = "cache on" if cache else "cache off"
        measure(f"owned ({tag})", lambda n, lst=listener: owned_run(lst, n), N)
        names = [query(f"u{i}.miss.example.test", i & 0xFFFF) for i in range(N * 7)]
        offset = [0]

        def fwd(
            n: int,
            app: Any = app,
            lst: UdpListener = listener,
            offset: list[int] = offset,
            names: list[bytes] = names,
        ) -> None:
            start = offset[0]
            offset[0] += n
            forward_run(app, lst, n, names[start : start + n])

        measure(f"forwarded miss ({tag})", fwd, N)
        if cache:  # 1000 names answered once upstream, then asked again and again
            popular = [query(f"h{i}.zipf.example.test", i) for i in range(1000)]
            forward_run(app, listener, len(popular), popular)

            def hits(n: int, lst: UdpListener = listener, popular: list[bytes] = popular) -> None:
                addr = ("127.0.0.1", 40000)
                for i in range(n):
                    lst.datagram_received(popular[i % 1000], addr)

            hits(2000)  # the second ask of each remembers its bytes (the raw fast path)
            measure("cache hit (cache on)", hits, N)
        assert client.sent > 0
        app.forwarder.close()


if __name__ == "__main__":
    asyncio.run(main())

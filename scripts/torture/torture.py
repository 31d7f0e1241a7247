"""Torture harness for pldns serve: fuzz, overload, TCP abuse, spoofing, dead upstreams,
reloads under load. Prints a Markdown table (the README's "Reliability" section).

    python3 scripts/torture/torture.py            # the full run (about 10 minutes)
    python3 scripts/torture/torture.py --ci       # the bounded form CI runs (under 90 s)

It re-executes itself in a private network namespace (`unshare --net`, loopback only, needs
root) unless --no-netns is given. Everything is bounded in count and time. The "10 minutes
dead" rows run the real Forwarder and attempt policy on a fake clock (real time would take 20
minutes); the "real" rows run pldns itself for the seconds shown. Exit status 1 if a figure
misses its target (listed in TARGETS).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from load import UdpLoad, drain, owned_query, query  # noqa: E402
from upstreams import SPOOF_IP, World  # noqa: E402

from tests.fakes.ports import free_port  # noqa: E402

OWNED = "eci-vpc.cn-hangzhou.aliyuncs.com"
DEADLINE = 3.0
TRY_TIMEOUT = 1.0


@dataclass
class Scale:
    udp_fuzz: int
    tcp_fuzz: int
    overload_seconds: float
    dead_seconds: float
    reloads: int
    abuse_connections: int
    p99_floor: float  # seconds: "p99 <= 2x healthy" is checked as p99 <= max(2x healthy, this)
    # seconds past the deadline a reply may be measured at: pldns answers SERVFAIL 0.3 s
    # before it, but the --ci form runs beside the test suite and other CPU-bound work, where
    # the client here may see it late (3.124 s was seen with two busy loops beside it)
    late_margin: float = 0.0
    # seconds past the 2 s target an overload may take to be normal again, for the same
    # reason (2.41 s was seen with a black-holed upstream and two busy loops beside it); kept
    # below DEADLINE, so a pldns that recovers only once the blast's queries have reached
    # their deadline still fails
    recover_margin: float = 0.0


CI = Scale(
    udp_fuzz=60_000, tcp_fuzz=1_500, overload_seconds=2, dead_seconds=5, reloads=6,
    abuse_connections=60, p99_floor=0.1, late_margin=1.0, recover_margin=0.9,
)  # fmt: skip
FULL = Scale(
    udp_fuzz=1_000_000, tcp_fuzz=10_000, overload_seconds=10, dead_seconds=60, reloads=40,
    abuse_connections=400, p99_floor=0.002,
)  # fmt: skip


@dataclass
class Row:
    run: str
    load: str
    result: str
    ok: bool
    rss: str = ""
    notes: list[str] = field(default_factory=list)


class Pldns:
    """pldns serve in a subprocess, on 127.0.0.1:<port>, with its RSS."""

    def __init__(self, workdir: Path, upstreams: list[str], **sections: object) -> None:
        import yaml

        self.port = free_port()
        self.addr = ("127.0.0.1", self.port)
        self.config = {
            "region": "cn-hangzhou",
            "listen": [f"127.0.0.1:{self.port}"],
            "upstreams": upstreams,
            "forward": {"try_timeout": TRY_TIMEOUT, "deadline": DEADLINE},
            "tcp": {"max_connections": 100, "idle_timeout": 3.0, "query_timeout": 1.0},
            "http": {"listen": "off"},
            "log": {"level": "warning"},
            "lifecycle": {"lame_duck": 0, "drain": 1.0, "reload_poll": 0},
            "services": {"eci": {"domains": ["eci-vpc.{region}.aliyuncs.com"],
                                 "static": ["192.168.10.5"]}},
        }  # fmt: skip
        for key, value in sections.items():
            self.config[key] = {**self.config.get(key, {}), **value}  # type: ignore[dict-item]
        self.path = workdir / f"pldns-{self.port}.yaml"
        self.log = workdir / f"pldns-{self.port}.log"
        self.path.write_text(yaml.safe_dump(self.config))
        self.yaml = yaml
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pldns", "serve", "--config", str(self.path)],
            stdout=subprocess.DEVNULL, stderr=self.log.open("wb"), env=env,
        )  # fmt: skip
        end = time.monotonic() + 20
        while time.monotonic() < end:
            if self.alive_and_answering(0.3):
                return
            if self.proc.poll() is not None:
                raise SystemExit(f"pldns exited at start:\n{self.log.read_text()}")
        raise SystemExit(f"pldns did not answer:\n{self.log.read_text()}")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def alive_and_answering(self, timeout: float = 1.0) -> bool:
        if self.proc.poll() is not None:
            return False
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(owned_query(OWNED, 4321), self.addr)
            try:
                data = s.recv(4096)
            except OSError:
                return False
            return data[:2] == (4321).to_bytes(2, "big") and data[3] & 0x0F == 0

    def reconfigure(self, **forward: object) -> None:
        self.config["forward"] = {**self.config["forward"], **forward}  # type: ignore[dict-item]
        self.path.write_text(self.yaml.safe_dump(self.config))
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> bool:
        """Stop it; True if it had not crashed and exited cleanly."""
        crashed = self.proc.poll() is not None
        self.proc.terminate()
        try:
            code = self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return False
        return not crashed and code == 0 and "Traceback" not in self.log.read_text()


def rss_note(before: float, after: float) -> str:
    return f"{before:.1f} → {after:.1f} MB ({after - before:+.1f})"


# --- the runs ----------------------------------------------------------------------------------


def udp_fuzz(work: Path, world: World, scale: Scale) -> Row:
    up = world.upstream("fast")
    # The cache is on, small: at its bound after the warm-up, so growth past it is a leak.
    server = Pldns(work, [up.address], cache={"size": 2000})
    base = owned_query(OWNED, 1) + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"
    rng = random.Random(9)
    rss0 = 0.0
    warm = scale.udp_fuzz // 5  # RSS is measured from here: Python keeps its peak arenas
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
    for s in socks:
        s.setblocking(False)
    for i in range(scale.udp_fuzz):
        if i == warm:
            time.sleep(0.5)
            rss0 = server.rss_mb()
        kind = i % 4
        if kind == 0:
            pkt = rng.randbytes(rng.randrange(0, 600))
        else:  # a real query with a few bytes flipped, cut or extended
            pkt = bytearray(base if kind != 3 else query(f"x{i}.example.test", i & 0xFFFF))
            for _ in range(rng.randrange(1, 4)):
                pkt[rng.randrange(2, len(pkt))] = rng.randrange(256)
            if kind == 2:
                pkt = pkt[: rng.randrange(0, len(pkt))]
            pkt = bytes(pkt)
        try:
            socks[i % 4].sendto(pkt, server.addr)
        except BlockingIOError:
            time.sleep(0.001)
        if i % 2048 == 0:
            for s in socks:
                drain(s)
            time.sleep(0.002)  # let it breathe: this measures robustness, not drop rate
    time.sleep(1.0)
    alive = server.alive_and_answering(2.0)
    rss1 = server.rss_mb()
    clean = server.stop()
    ok = alive and clean and rss1 - rss0 <= 5
    return Row("UDP fuzz", f"{scale.udp_fuzz:,} packets (random, mutated, cut)",
               f"crashes {0 if alive and clean else 1}; answering after", ok, rss_note(rss0, rss1))  # fmt: skip


def tcp_fuzz(work: Path, world: World, scale: Scale) -> Row:
    up = world.upstream("fast")
    server = Pldns(work, [up.address], tcp={"max_connections": 1000}, cache={"size": 2000})
    rng = random.Random(11)
    rss0 = 0.0
    good = owned_query(OWNED, 5)
    for i in range(scale.tcp_fuzz):
        if i == scale.tcp_fuzz // 5:
            rss0 = server.rss_mb()
        try:
            with socket.create_connection(server.addr, timeout=2) as s:
                kind = i % 4
                if kind == 0:
                    s.sendall(rng.randbytes(rng.randrange(1, 300)))
                elif kind == 1:  # a lying length prefix
                    s.sendall(rng.randrange(65536).to_bytes(2, "big") + rng.randbytes(40))
                elif kind == 2:  # a good frame with garbage inside
                    body = bytearray(good)
                    body[rng.randrange(2, len(body))] = rng.randrange(256)
                    s.sendall(len(body).to_bytes(2, "big") + body)
                else:  # a good query, then reset
                    s.sendall(len(good).to_bytes(2, "big") + good)
                    s.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
        except OSError:
            pass
    time.sleep(0.5)
    alive = server.alive_and_answering(2.0)
    rss1 = server.rss_mb()
    clean = server.stop()
    ok = alive and clean and rss1 - rss0 <= 5
    return Row("TCP fuzz", f"{scale.tcp_fuzz:,} connections (garbage, lying lengths, resets)",
               f"crashes {0 if alive and clean else 1}; answering after", ok, rss_note(rss0, rss1))  # fmt: skip


def overload(work: Path, world: World, scale: Scale, blackhole: bool) -> Row:
    fast = world.upstream("fast")
    ups = [world.upstream("blackhole").address, fast.address] if blackhole else [fast.address]
    server = Pldns(work, ups, cache={"enabled": False})  # the forwarder is what is tortured
    load = UdpLoad(server.addr)
    # Warm-up, the same load: RSS is measured after it (Python keeps its peak arenas, and
    # max_inflight bounds the peak), so the growth shown is what a second run adds.
    load.blast(scale.overload_seconds, names=30_000)
    time.sleep(DEADLINE + 0.5)
    rss0 = server.rss_mb()
    sent, answered = load.blast(scale.overload_seconds, names=30_000)
    stopped = time.monotonic()
    recovered = None
    while time.monotonic() - stopped < 10:
        lat = load.one("www.example.test", timeout=0.5)
        if lat is not None and lat < 0.05:
            recovered = time.monotonic() - stopped
            break
        time.sleep(0.02)
    rss1 = server.rss_mb()
    clean = server.stop()
    rate = sent / scale.overload_seconds
    ok = clean and recovered is not None and recovered <= 2.0 + scale.recover_margin
    what = "1 black-holed + 1 fast upstream" if blackhole else "1 fast upstream"
    got = f"answered {answered / max(sent, 1):.0%} during; normal again {recovered:.2f} s after" \
        if recovered is not None else "did not recover in 10 s"  # fmt: skip
    return Row(f"overload, {what}", f"{rate:,.0f} q/s offered for {scale.overload_seconds:g} s",
               got, ok, rss_note(rss0, rss1))  # fmt: skip


def dead_real(work: Path, world: World, scale: Scale, all_dead: bool) -> Row:
    fast = world.upstream("fast")
    dead = [world.upstream("blackhole") for _ in range(2 if all_dead else 1)]
    ups = [d.address for d in dead] + ([] if all_dead else [fast.address])
    server = Pldns(work, ups, cache={"enabled": False})
    rss0 = server.rss_mb()
    load = UdpLoad(server.addr)
    if not all_dead:
        healthy_server = Pldns(work, [fast.address], cache={"enabled": False})
        healthy = UdpLoad(healthy_server.addr).steady(min(5.0, scale.dead_seconds), 200)
        healthy_server.stop()
    res = load.steady(scale.dead_seconds, 200)
    rss1 = server.rss_mb()
    clean = server.stop()
    if all_dead:
        servfail = res.rcodes.get(2, 0)
        ok = clean and servfail == res.sent and max(res.latencies) < DEADLINE + scale.late_margin
        return Row("all upstreams dead (real time)", f"{res.sent:,} queries over {scale.dead_seconds:g} s",
                   f"SERVFAIL {servfail / res.sent:.1%}, slowest {max(res.latencies):.3f} s (deadline {DEADLINE:g} s)",
                   ok, rss_note(rss0, rss1))  # fmt: skip
    # After the first max_fails failures: the queries sent once they were in (one try_timeout
    # after the start). Those sent before waited on the dead upstream: counted apart.
    late = [
        lat for t, lat in zip(res.sent_at, res.latencies, strict=True) if t >= TRY_TIMEOUT + 0.05
    ]
    waited = sum(1 for lat in res.latencies if lat >= TRY_TIMEOUT * 0.9)
    p99, hp99 = pct(late, 99), pct(healthy.latencies, 99)
    answered = res.answered / res.sent
    # The --ci form runs beside other tests: its floor (100 ms) still catches any query that
    # waits on the dead upstream (a try_timeout, 1 s), without failing on a busy machine.
    ok = clean and answered >= 0.999 and p99 <= max(2 * hp99, scale.p99_floor)
    return Row("1 of 2 upstreams dead (real time)", f"{res.sent:,} queries over {scale.dead_seconds:g} s at 200/s",
               f"answered {answered:.2%}; p99 after detection {p99 * 1000:.1f} ms vs healthy "
               f"{hp99 * 1000:.1f} ms; {waited} sent before detection waited ~try_timeout",
               ok, rss_note(rss0, rss1))  # fmt: skip


def pct(values: list[float], p: int) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p / 100))]


def dead_fake_clock(all_dead: bool) -> Row:
    from tests.fakes.clock import FakeLoop, simulate

    loop = FakeLoop()
    healthy = simulate(loop, 2, dead=[], seconds=60, qps=100)
    res = simulate(loop, 2, dead=[0, 1] if all_dead else [0], seconds=600, qps=100)
    if all_dead:
        ok = res.answered == 0 and max(res.latencies) < DEADLINE and res.timers_peak <= 3
        return Row("all upstreams dead, 10 min (fake clock)", f"{res.total:,} queries",
                   f"SERVFAIL 100%, slowest {max(res.latencies):.3f} s; timers ≤ {res.timers_peak}",
                   ok)  # fmt: skip
    late = res.latencies[100:]  # after the first try_timeout (100 queries at 100/s)
    p99, hp99 = pct(late, 99), pct(healthy.latencies, 99)
    ok = res.answered / res.total >= 0.999 and p99 <= 2 * hp99 and res.timers_peak <= 3
    return Row("1 of 2 upstreams dead, 10 min (fake clock)", f"{res.total:,} queries",
               f"answered {res.answered / res.total:.2%}; p99 {p99 * 1000:.1f} ms vs healthy "
               f"{hp99 * 1000:.1f} ms; timers ≤ {res.timers_peak}", ok)  # fmt: skip


def spoofed(work: Path, world: World, scale: Scale) -> Row:
    up = world.upstream("spoof")
    server = Pldns(work, [up.address], cache={"enabled": False})
    load = UdpLoad(server.addr)
    res = load.steady(max(2.0, scale.overload_seconds), 300, names=5000, collect=True)
    accepted = sum(1 for r in res.replies if SPOOF_IP in r)
    clean = server.stop()
    ok = clean and accepted == 0 and res.answered >= res.sent * 0.99
    return Row("spoofed replies", f"{up.spoofed_sent:,} forged replies from the upstream's address",
               f"accepted {accepted}; genuine answered {res.answered / res.sent:.1%}", ok)  # fmt: skip


def abuse(
    kind: str,
    addr: tuple[str, int],
    stop: threading.Event,
    held: list[socket.socket],
    opened: list[int],
    scale: Scale,
) -> None:
    """Keep up to scale.abuse_connections abusive connections open until `stop`."""
    rng = random.Random(3)
    frame = owned_query(OWNED, 9)
    frame = len(frame).to_bytes(2, "big") + frame
    big = query("big.example.test", 7, qtype=16)
    big = len(big).to_bytes(2, "big") + big
    while not stop.is_set():
        if len(held) < scale.abuse_connections:
            try:
                s = socket.socket()
                if kind == "non-reading":
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.settimeout(0.2)
                s.connect(addr)
                held.append(s)
                opened[0] += 1
            except OSError:
                s.close()
        for s in list(held):
            try:
                if kind == "slowloris":
                    s.send(frame[rng.randrange(len(frame)) :][:1])
                elif kind == "non-reading":
                    s.send(big * 20)
                elif kind == "pipelining":
                    s.send(frame * 50)
                    s.recv(65535)
            except OSError:
                held.remove(s)
                s.close()
        time.sleep(0.05)


def tcp_abuse(work: Path, world: World, scale: Scale) -> list[Row]:
    from load import tcp_ask

    up = world.upstream("fast")
    rows = []
    for kind in ("idle", "slowloris", "non-reading", "pipelining"):
        server = Pldns(work, [up.address], tcp={"max_connections": scale.abuse_connections // 2})
        rss0 = server.rss_mb()
        stop = threading.Event()
        held: list[socket.socket] = []
        opened = [0]

        thread = threading.Thread(
            target=abuse, args=(kind, server.addr, stop, held, opened, scale), daemon=True
        )
        thread.start()
        time.sleep(1.0)
        served = tried = 0
        end = time.monotonic() + max(3.0, scale.overload_seconds * 2)
        while time.monotonic() < end:  # fresh clients, each with up to 3 s (it may retry)
            tried += 1
            served += tcp_ask(server.addr, owned_query(OWNED, tried), 3.0)
            time.sleep(0.2)
        stop.set()
        thread.join(5)
        for s in held:
            s.close()
        time.sleep(0.5)
        rss1 = server.rss_mb()
        clean = server.stop()
        ok = clean and served == tried
        rows.append(Row(f"TCP abuse: {kind}", f"{opened[0]:,} abusive connections (cap {scale.abuse_connections // 2})",
                        f"fresh clients served {served}/{tried}", ok, rss_note(rss0, rss1)))  # fmt: skip
    return rows


def reload_under_load(work: Path, world: World, scale: Scale) -> Row:
    up = world.upstream("fast")
    server = Pldns(work, [up.address])
    rss0 = server.rss_mb()
    load = UdpLoad(server.addr)
    result: list[object] = []
    seconds = scale.reloads * 0.5 + 1
    thread = threading.Thread(target=lambda: result.append(load.steady(seconds, 300)), daemon=True)
    thread.start()
    for i in range(scale.reloads):
        time.sleep(0.5)
        server.reconfigure(try_timeout=0.9 if i % 2 else 1.0, udp_sockets=4 + i % 3)
    thread.join(seconds + 10)
    res = result[0]
    rss1 = server.rss_mb()
    clean = server.stop()
    lost = res.sent - res.answered  # type: ignore[attr-defined]
    ok = clean and lost == 0
    return Row("reload under load", f"{scale.reloads} reloads of forward.* during {res.sent:,} queries",  # type: ignore[attr-defined]
               f"lost {lost}", ok, rss_note(rss0, rss1))  # fmt: skip


# --- driver ------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ci", action="store_true", help="the bounded form (under 90 s)")
    ap.add_argument("--no-netns", action="store_true", help="run here (loopback) without unshare")
    ap.add_argument("--only", default="", help="comma-separated run names (prefixes)")
    args = ap.parse_args()
    if not args.no_netns and os.environ.get("PLDNS_TORTURE_NETNS") != "1":
        env = dict(os.environ, PLDNS_TORTURE_NETNS="1")
        cmd = ["unshare", "--net", "--", sys.executable, __file__, *sys.argv[1:]]
        return subprocess.call(cmd, env=env)
    if os.environ.get("PLDNS_TORTURE_NETNS") == "1":
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    scale = CI if args.ci else FULL
    started = time.monotonic()
    world = World()
    rows: list[Row] = []
    runs = {
        "udp-fuzz": lambda w: [udp_fuzz(w, world, scale)],
        "tcp-fuzz": lambda w: [tcp_fuzz(w, world, scale)],
        "overload": lambda w: [overload(w, world, scale, False), overload(w, world, scale, True)],
        "tcp-abuse": lambda w: tcp_abuse(w, world, scale),
        "spoof": lambda w: [spoofed(w, world, scale)],
        "dead": lambda w: [
            dead_real(w, world, scale, False),
            dead_real(w, world, scale, True),
            dead_fake_clock(False),
            dead_fake_clock(True),
        ],
        "reload": lambda w: [reload_under_load(w, world, scale)],
    }
    wanted = [
        n for n in runs if not args.only or any(n.startswith(o) for o in args.only.split(","))
    ]
    with tempfile.TemporaryDirectory(prefix="pldns-torture-") as tmp:
        for name in wanted:
            t0 = time.monotonic()
            for row in runs[name](Path(tmp)):
                rows.append(row)
                print(f"# {row.run}: {row.result} [{'ok' if row.ok else 'MISSED'}] "
                      f"({time.monotonic() - t0:.0f} s)", file=sys.stderr, flush=True)  # fmt: skip
    world.stop()
    print("| run | load | result | RSS | target met |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r.run} | {r.load} | {r.result} | {r.rss or '—'} | {'yes' if r.ok else '**no**'} |"
        )
    print(
        f"\n{len(rows)} runs, {sum(r.ok for r in rows)} met their targets, "
        f"{time.monotonic() - started:.0f} s ({'ci' if args.ci else 'full'} scale)"
    )
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""CPU time per query of a server at a fixed offered rate: a figure a busy machine barely moves.

    unshare --net bench/.venv/bin/python bench/cpucost.py [--rate 10000] [--duration 5] \
        [--workloads synth,miss,zipf] [--servers pldns,pldns-cache,dnsdist,dnsdist-pc,unbound,dnsmasq-20k] [--perf]

Throughput on a shared machine depends on what else runs; the CPU seconds the server itself
spends per answered query does much less. In a network namespace with only `lo` (refuses to
run otherwise), knotd serves the harness's zone on CPU 1, each server runs pinned to CPU 0,
dnsperf (CPU 1) offers `--rate` queries per second for `--duration` s, and the server's user
and system time (/proc/PID/stat) over the run is divided by the answered queries. Also
reported: the latency percentiles dnsperf saw (-v), and with --perf, a `perf stat` of the
server's context switches and syscalls per query. Needs bench/data (bench/run.sh makes it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import types

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
UP, PORT = 15300, 15353
QFILE = {
    "synth": "q-synth.txt",
    "pass": "q-pass.txt",
    "mix": "q-mix.txt",
    "miss": "q-miss-main.txt",
    "zipf": "q-zipf.txt",
}
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def wait_answer(name: str, port: int) -> None:
    for _ in range(150):
        out = subprocess.run(
            ["dig", "+short", "+time=1", "+tries=1", "-p", str(port), "@127.0.0.1", name],
            capture_output=True,
            text=True,
        ).stdout
        if out.strip() and not out.startswith(";;"):  # not ";; communications error"
            return
        time.sleep(0.1)
    raise SystemExit(f"no answer for {name} on {port}")


def knotd(tmp: str) -> subprocess.Popen[bytes]:
    conf = os.path.join(tmp, "knot.conf")
    with open(conf, "w") as f:
        f.write(
            f"server:\n    listen: 127.0.0.1@{UP}\n    rundir: {tmp}\n    udp-workers: 1\n"
            f"    tcp-workers: 1\n    background-workers: 1\ndatabase:\n    storage: {tmp}/db\n"
            f'template:\n  - id: default\n    storage: {DATA}\n    file: "%s.zone"\n'
            "    zonefile-sync: -1\n    zonefile-load: whole\n    journal-content: none\n"
            "    semantic-checks: off\nzone:\n  - domain: example.test\n"
        )
    return subprocess.Popen(["taskset", "-c", "1", "knotd", "-c", conf], stderr=subprocess.DEVNULL)


def server_command(name: str, tmp: str, python: str) -> list[str]:
    synth = json.load(open(os.path.join(DATA, "synth.json")))
    if name.startswith("pldns"):
        cache = "cache" in name
        services = {
            f"s{i}": {"domains": [n.rstrip(".")], "static": ips}
            for i, (n, ips) in enumerate(synth.items())
        }
        config = {
            "region": "cn-hangzhou",
            "listen": [f"127.0.0.1:{PORT}"],
            "upstreams": [f"127.0.0.1:{UP}"],
            "allow": ["127.0.0.0/8", "::1/128"],
            "answers": {"ttl": 60},
            "lifecycle": {"lame_duck": 0, "drain": 1},
            "http": {"listen": "127.0.0.1:19153"},
            "cache": {"enabled": cache},
            "services": services,
        }
        path = os.path.join(tmp, f"{name}.yaml")
        with open(path, "w") as f:
            json.dump(config, f)
        return [python, "-m", "pldns", "serve", "--config", path, "--log-level", "warning"]
    # The harness's own peer configs (bench/bench.py, beside this file): spoofed owned names,
    # the packet cache for dnsdist-pc, unbound's default caches, dnsmasq's 20k-entry cache.
    import bench

    builds = {
        "dnsdist": lambda: bench.dnsdist_build(False),
        "dnsdist-pc": lambda: bench.dnsdist_build(True),
        "unbound": lambda: bench.unbound_build(True),
        "dnsmasq-20k": lambda: bench.dnsmasq_build(20000),
    }
    if name not in builds:
        raise SystemExit(f"unknown server {name}")
    peer = types.SimpleNamespace(port=PORT)
    return builds[name]()(peer, tmp, {"upstream": f"127.0.0.1:{UP}"})


def percentiles(path: str) -> tuple[float, float, float]:
    lat = []
    with open(path) as f:
        for line in f:
            if (line.startswith("> ") and "NOERROR" in line) or (
                line.startswith("> ") and "NXDOMAIN" in line
            ):
                try:
                    lat.append(float(line.split()[-1]))
                except ValueError:
                    pass
    lat.sort()
    if not lat:
        return (0.0, 0.0, 0.0)

    def p(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1e6

    return p(0.5), p(0.99), p(0.999)


def run(args: argparse.Namespace) -> None:
    tmp = tempfile.mkdtemp(prefix="cpucost-")
    up = knotd(tmp)
    try:
        wait_answer("h00000.example.test", UP)
        for name in args.servers.split(","):
            for wl in args.workloads.split(","):
                srv = subprocess.Popen(
                    ["taskset", "-c", "0", *server_command(name, tmp, args.python)],
                    stdout=subprocess.DEVNULL,
                    stderr=open(os.path.join(tmp, f"{name}.log"), "a"),
                )
                try:
                    wait_answer("ecs-vpc.cn-hangzhou.aliyuncs.com", PORT)
                    wait_answer("h00001.example.test", PORT)
                    qf = os.path.join(DATA, QFILE[wl])
                    subprocess.run(
                        [
                            "taskset",
                            "-c",
                            "1",
                            "dnsperf",
                            "-s",
                            "127.0.0.1",
                            "-p",
                            str(PORT),
                            "-d",
                            qf,
                            "-l",
                            "1",
                            "-Q",
                            str(args.rate),
                            "-c",
                            "10",
                        ],
                        capture_output=True,
                    )  # warm-up
                    verbose = os.path.join(tmp, f"{name}-{wl}.v")
                    perf = None
                    trace = None
                    if args.syscalls:
                        trace = subprocess.Popen(
                            [
                                "perf",
                                "trace",
                                "-s",
                                "-p",
                                str(srv.pid),
                                "-o",
                                os.path.join(tmp, f"{name}-{wl}.trace"),
                            ],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        )
                        time.sleep(0.5)
                    record = None
                    if args.record:
                        record = subprocess.Popen(
                            [
                                "perf",
                                "record",
                                "-F",
                                "1999",
                                "-g",
                                "-p",
                                str(srv.pid),
                                "-o",
                                os.path.join(tmp, f"{name}-{wl}.data"),
                            ],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        )
                        time.sleep(0.5)
                    if args.perf:
                        perf = subprocess.Popen(
                            [
                                "perf",
                                "stat",
                                "-x,",
                                "-e",
                                "context-switches,raw_syscalls:sys_enter",
                                "-p",
                                str(srv.pid),
                                "-o",
                                os.path.join(tmp, f"{name}-{wl}.perf"),
                            ],
                        )
                    c0 = cpu_seconds(srv.pid)
                    with open(verbose, "w") as vf:
                        out = subprocess.run(
                            [
                                "taskset",
                                "-c",
                                "1",
                                "dnsperf",
                                "-s",
                                "127.0.0.1",
                                "-p",
                                str(PORT),
                                "-d",
                                qf,
                                "-l",
                                str(args.duration),
                                "-Q",
                                str(args.rate),
                                "-c",
                                "10",
                                "-v",
                            ],
                            stdout=vf,
                            stderr=subprocess.DEVNULL,
                        )
                    c1 = cpu_seconds(srv.pid)
                    extra = ""
                    if perf is not None:
                        perf.send_signal(signal.SIGINT)
                        perf.wait(10)
                    if record is not None:
                        record.send_signal(signal.SIGINT)
                        record.wait(30)
                        for sort in ("dso", "sym"):
                            rep = subprocess.run(
                                [
                                    "perf",
                                    "report",
                                    "--no-children",
                                    "--sort",
                                    sort,
                                    "--stdio",
                                    "-i",
                                    os.path.join(tmp, f"{name}-{wl}.data"),
                                ],
                                capture_output=True,
                                text=True,
                            ).stdout
                            lines = [
                                ln
                                for ln in rep.splitlines()
                                if ln.strip()
                                and not ln.startswith("#")
                                and "%" in ln
                                and not ln.lstrip().startswith("|")
                                and not ln.lstrip().startswith("-")
                            ]
                            print("\n".join(lines[: args.top]))
                    if trace is not None:
                        trace.send_signal(signal.SIGINT)
                        trace.wait(10)
                        with open(os.path.join(tmp, f"{name}-{wl}.trace")) as tf:
                            print(tf.read()[:2500])
                    completed = 0
                    with open(verbose) as vf:
                        for line in vf:
                            if "Queries completed:" in line:
                                completed = int(line.split()[2])
                    if perf is not None:
                        counts = {}
                        for line in open(os.path.join(tmp, f"{name}-{wl}.perf")):
                            parts = line.strip().split(",")
                            if len(parts) > 2 and parts[0].isdigit():
                                counts[parts[2]] = int(parts[0])
                        extra = "  " + "  ".join(
                            f"{k.split(':')[-1]}/q={v / max(completed, 1):.2f}"
                            for k, v in counts.items()
                        )
                    if args.rss:
                        with open(f"/proc/{srv.pid}/status") as sf:
                            rss = next(ln for ln in sf if ln.startswith("VmRSS")).split()[1]
                        extra += f"  rss={int(rss) / 1024:.1f}MB"
                    p50, p99, p999 = percentiles(verbose)
                    print(
                        f"{name:12s} {wl:6s} rate={args.rate} answered={completed} "
                        f"cpu/query={(c1 - c0) / max(completed, 1) * 1e6:6.1f}us "
                        f"busy={(c1 - c0) / args.duration * 100:5.1f}% "
                        f"p50/p99/p99.9={p50:.0f}/{p99:.0f}/{p999:.0f}us{extra}",
                        flush=True,
                    )
                    _ = out
                finally:
                    srv.send_signal(signal.SIGTERM)
                    try:
                        srv.wait(10)
                    except subprocess.TimeoutExpired:
                        srv.kill()
                        srv.wait()
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(10)
        if args.keep:
            print(f"kept {tmp} (perf data, logs)")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=10000)
    ap.add_argument("--duration", type=float, default=5)
    ap.add_argument("--workloads", default="synth,miss")
    ap.add_argument("--servers", default="pldns,dnsdist")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--perf", action="store_true")
    ap.add_argument("--record", action="store_true", help="perf record: where the CPU goes")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--keep", action="store_true", help="keep the run's directory (perf data)")
    ap.add_argument("--rss", action="store_true", help="the server's RSS after the run")
    ap.add_argument("--syscalls", action="store_true", help="perf trace -s: syscalls by kind")
    args = ap.parse_args()
    if os.environ.get("CPUCOST_IN_NETNS") != "1":
        env = dict(os.environ, CPUCOST_IN_NETNS="1")
        os.execvpe("unshare", ["unshare", "--net", sys.executable, *sys.argv], env)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    if (
        subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout.count("inet")
        > 2
    ):
        raise SystemExit("refusing: the namespace has interfaces other than lo")
    run(args)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Resident memory of a pldns process holding N cached answers (default 100k).

Starts a tiny raw-UDP upstream (in this process, a thread) that answers every A query with
one A record (TTL 3600), starts `python -m pldns serve` forwarding to it with the cache
sized for N, sends N distinct names (u0.rss.test ... , 256 outstanding), then reads the
pldns process's VmRSS/VmHWM from /proc and the entry count from /status. Loopback only.

    python3 bench/cache_rss.py [--entries 100000] [--python PY]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
LOOP = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOP, 0))
        port = s.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
        t.bind((LOOP, port))  # the TCP side free too (pldns binds both)
    return port


def upstream(sock: socket.socket, stop: threading.Event) -> None:
    """Answer every query: header QR+RA, the question, one A RR (pointer to the name)."""
    sock.settimeout(0.2)
    answer = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x0e\x10\x00\x04\xc0\x00\x02\x01"
    while not stop.is_set():
        try:
            data, addr = sock.recvfrom(4096)
        except TimeoutError:
            continue
        qd_end = 12
        while data[qd_end]:
            qd_end += data[qd_end] + 1
        qd_end += 5
        head = data[:2] + bytes((0x81, 0x80)) + b"\x00\x01\x00\x01\x00\x00\x00\x00"
        sock.sendto(head + data[12:qd_end] + answer, addr)


def query(qid: int, name: str) -> bytes:
    wire = b"".join(bytes((len(p),)) + p.encode() for p in name.split(".")) + b"\x00"
    return (
        qid.to_bytes(2, "big")
        + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
        + wire
        + b"\x00\x01\x00\x01"
    )


def vm(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                key, value = line.split(":")
                out[key] = int(value.split()[0])  # kB
    return out


def fill(port: int, start: int, count: int, window: int = 256) -> int:
    """Send `count` distinct names, `window` outstanding; the number of replies."""
    got = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((LOOP, port))
        sock.settimeout(2.0)
        sent = 0
        while got < count:
            while sent < count and sent - got < window:
                i = start + sent
                sock.send(query(i & 0xFFFF, f"u{i}.rss.test"))
                sent += 1
            try:
                sock.recv(4096)
                got += 1
            except TimeoutError:
                sent = got  # some were lost (a full buffer): send from there again
    return got


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--python", default=sys.executable, help="the Python that has pldns")
    args = ap.parse_args()

    up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    up.bind((LOOP, 0))
    stop = threading.Event()
    threading.Thread(target=upstream, args=(up, stop), daemon=True).start()
    port, http = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        conf = os.path.join(tmp, "pldns.yaml")
        with open(conf, "w") as f:
            f.write(
                "region: cn-hangzhou\n"
                f'listen: ["{LOOP}:{port}"]\n'
                f'upstreams: ["{LOOP}:{up.getsockname()[1]}"]\n'
                f'http: {{listen: "{LOOP}:{http}"}}\n'
                "lifecycle: {lame_duck: 0, drain: 1}\n"
                f"cache: {{size: {args.entries + args.entries // 50 + 10}}}\n"
                "services:\n"
                '  eci: {domains: ["eci-vpc.{region}.aliyuncs.com"], static: [192.168.10.5]}\n'
            )
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.Popen(
            [args.python, "-m", "pldns", "serve", "--config", conf, "--log-level", "warning"],
            env=env,
            stdin=subprocess.DEVNULL,
        )
        try:
            end = time.monotonic() + 20
            while time.monotonic() < end:
                try:
                    if fill(port, 10_000_000, 1) == 1:
                        break
                except OSError:
                    time.sleep(0.1)
            base = vm(proc.pid)
            began = time.monotonic()
            fill(port, 0, args.entries)
            took = time.monotonic() - began
            time.sleep(0.5)
            after = vm(proc.pid)
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(f"http://{LOOP}:{http}/status", timeout=5) as resp:
                cache = json.loads(resp.read())["cache"]
        finally:
            proc.terminate()
            proc.wait(10)
            stop.set()
    print(f"pldns with an empty cache:  VmRSS {base['VmRSS'] / 1024:.1f} MB")
    print(
        f"after {args.entries} distinct answers ({took:.1f} s): {cache['entries']} entries, "
        f"VmRSS {after['VmRSS'] / 1024:.1f} MB, peak {after['VmHWM'] / 1024:.1f} MB, "
        f"{(after['VmRSS'] - base['VmRSS']) * 1024 / max(cache['entries'], 1):.0f} bytes/entry"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

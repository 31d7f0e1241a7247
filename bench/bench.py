#!/usr/bin/env python3
"""Side-by-side DNS forwarder benchmark on one machine (loopback only).

See README.md.  Stdlib only (the Python baseline peers use the venv's dnslib/uvloop).

For every peer x workload cell:
    start the peer fresh (pinned to --server-cpu) -> wait until it answers a synthesized and a
    forwarded name -> warm-up dnsperf run -> measured throughput run (closed loop, -q outstanding)
    -> optional fixed-rate latency run (dnsperf -Q RATE -v, percentiles) -> stop the peer by PID.
The upstream (knotd, authoritative for example.test) runs once for the whole invocation.
All traffic is 127.0.0.1 <-> 127.0.0.1.
"""

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(BENCH, "data")
VENV_PY = os.path.join(BENCH, ".venv", "bin", "python")
LOOP = "127.0.0.1"
CLK = os.sysconf("SC_CLK_TCK")

WORKLOADS = {
    # name: (throughput file, warm-up file, latency file, description)
    "synth": ("q-synth.txt", "q-synth.txt", "q-synth.txt", "synthesized names only"),
    "pass": (
        "q-pass.txt",
        "q-pass.txt",
        "q-pass.txt",
        "forwarded, uniform over 10k zone names (cacheable: a cache holds the whole set after warm-up)",
    ),
    "mix": ("q-mix.txt", "q-mix.txt", "q-mix.txt", "90% synthesized / 10% forwarded (10k set)"),
    "zipf": (
        "q-zipf.txt",
        "q-zipf.txt",
        "q-zipf.txt",
        "forwarded, 10k zone names repeating with Zipf-like popularity (s=1): a cache's job",
    ),
    "miss": (
        "q-miss-main.txt",
        "q-miss-warm.txt",
        "q-miss-lat.txt",
        "forwarded, every name distinct (wildcard): a cache can never hit",
    ),
}
DEFAULT_WORKLOADS = ["synth", "pass", "mix", "miss"]


# ----------------------------------------------------------------------------- peers
class Peer:
    def __init__(self, name, port, desc, build, cache):
        self.name, self.port, self.desc, self.build, self.cache = name, port, desc, build, cache


def synth_table():
    with open(os.path.join(DATA, "synth.json")) as f:
        return json.load(f)


def dnsdist_build(cache):
    def build(peer, rundir, ctx):
        lines = [
            'setSecurityPollSuffix("")  -- no security polling (it would query the outside world)',
            'setLocal("%s:%d")' % (LOOP, peer.port),
            'newServer{address="%s", checkName="example.test.", checkType="SOA"}' % ctx["upstream"],
        ]
        for name, ips in synth_table().items():
            lines.append(
                'addAction(QNameRule("%s"), SpoofAction({%s}))'
                % (name, ",".join('"%s"' % ip for ip in ips))
            )
        if cache:
            lines.append("pc = newPacketCache(200000, {maxTTL=86400, minTTL=0})")
            lines.append('getPool(""):setCache(pc)')
        conf = os.path.join(rundir, "dnsdist.conf")
        with open(conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        # --supervised: foreground, no interactive console on stdin
        return ["dnsdist", "--supervised", "--disable-syslog", "-C", conf]

    return build


def unbound_build(cache):
    def build(peer, rundir, ctx):
        uh, up = ctx["upstream"].split(":")
        lines = [
            "server:",
            "    interface: %s@%d" % (LOOP, peer.port),
            "    port: %d" % peer.port,
            "    do-ip6: no",
            "    do-daemonize: no",
            '    chroot: ""',
            '    username: ""',
            '    directory: "%s"' % rundir,
            '    pidfile: ""',
            "    use-syslog: no",
            '    logfile: ""',
            "    verbosity: 0",
            "    num-threads: 1",
            "    access-control: 127.0.0.0/8 allow",
            "    do-not-query-localhost: no   # else it refuses to forward to 127.0.0.1",
            '    module-config: "iterator"    # no DNSSEC validation (zone is unsigned)',
            "    qname-minimisation: no",
            '    local-zone: "test." nodefault  # unbound blocks .test (RFC 6761) by default',
        ]
        if not cache:
            # Unbound has no 'cache off' switch. Closest: everything expires immediately and
            # the caches are tiny.  Verified with the upstream query counter (see report).
            lines += [
                "    cache-max-ttl: 0",
                "    cache-max-negative-ttl: 0",
                "    msg-cache-size: 64k",
                "    rrset-cache-size: 64k",
                "    key-cache-size: 64k",
                "    neg-cache-size: 64k",
            ]
        for name, ips in synth_table().items():
            for ip in ips:
                lines.append('    local-data: "%s 60 IN A %s"' % (name, ip))
        lines += [
            "remote-control:",
            "    control-enable: no",
            "forward-zone:",
            '    name: "."',
            "    forward-addr: %s@%s" % (uh, up),
        ]
        conf = os.path.join(rundir, "unbound.conf")
        with open(conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        return ["unbound", "-d", "-c", conf]

    return build


def dnsmasq_build(cache_size):
    def build(peer, rundir, ctx):
        argv = [
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",  # never read /etc/resolv.conf (would add non-loopback upstreams)
            "--no-hosts",
            "--no-poll",
            "--port=%d" % peer.port,
            "--listen-address=%s" % LOOP,
            "--bind-interfaces",
            "--pid-file=",
            "--log-facility=-",
            "--local-ttl=60",
            "--server=%s" % ctx["upstream"].replace(":", "#"),
            "--cache-size=%d" % cache_size,
        ]
        for name, ips in synth_table().items():
            for ip in ips:
                argv.append("--address=/%s/%s" % (name.rstrip("."), ip))
        return argv

    return build


def py_build(loop, parse):
    def build(peer, rundir, ctx):
        return [
            VENV_PY,
            os.path.join(BENCH, "peers", "pybase.py"),
            "--listen",
            "%s:%d" % (LOOP, peer.port),
            "--upstream",
            ctx["upstream"],
            "--synth",
            os.path.join(DATA, "synth.json"),
            "--loop",
            loop,
            "--parse",
            parse,
        ]

    return build


def candidate_build(template):
    def build(peer, rundir, ctx):
        uh, up = ctx["upstream"].split(":")
        cmd = template.format(
            port=peer.port,
            listen="%s:%d" % (LOOP, peer.port),
            upstream=ctx["upstream"],
            upstream_host=uh,
            upstream_port=up,
            synth_json=os.path.join(DATA, "synth.json"),
            synth_hosts=os.path.join(DATA, "synth.hosts"),
            rundir=rundir,
            bench=BENCH,
        )
        # exec keeps the PID, so CPU accounting and stop-by-PID hit the server itself
        return ["bash", "-c", "exec " + cmd]

    return build


def builtin_peers():
    P = [
        Peer(
            "dnsdist",
            5301,
            "dnsdist 1.7, SpoofAction + newServer, no packet cache",
            dnsdist_build(False),
            "off",
        ),
        Peer("dnsdist-pc", 5301, "dnsdist, packet cache 200k entries", dnsdist_build(True), "on"),
        Peer(
            "unbound",
            5302,
            "unbound, local-data + forward-zone, default caches",
            unbound_build(True),
            "on",
        ),
        Peer(
            "unbound-nc",
            5302,
            "unbound, cache-max-ttl 0 + 64k caches",
            unbound_build(False),
            "off*",
        ),
        Peer(
            "dnsmasq-nc",
            5303,
            "dnsmasq, address=/../ + server=, cache-size=0",
            dnsmasq_build(0),
            "off",
        ),
        Peer("dnsmasq", 5303, "dnsmasq, default cache-size=150", dnsmasq_build(150), "150"),
        Peer("dnsmasq-20k", 5303, "dnsmasq, cache-size=20000", dnsmasq_build(20000), "on"),
        Peer(
            "py-asyncio",
            5304,
            "Python asyncio + dnslib parse (baseline)",
            py_build("asyncio", "dnslib"),
            "off",
        ),
        Peer(
            "py-uvloop",
            5304,
            "Python uvloop + dnslib parse (baseline)",
            py_build("uvloop", "dnslib"),
            "off",
        ),
        Peer(
            "py-asyncio-raw",
            5304,
            "Python asyncio, hand-rolled qname match (baseline)",
            py_build("asyncio", "raw"),
            "off",
        ),
        Peer(
            "py-uvloop-raw",
            5304,
            "Python uvloop, hand-rolled qname match (baseline)",
            py_build("uvloop", "raw"),
            "off",
        ),
    ]
    return {p.name: p for p in P}


DEFAULT_PEERS = [
    "dnsdist",
    "dnsdist-pc",
    "unbound",
    "unbound-nc",
    "dnsmasq-nc",
    "dnsmasq",
    "dnsmasq-20k",
    "py-asyncio",
    "py-uvloop",
    "py-asyncio-raw",
    "py-uvloop-raw",
]


# ----------------------------------------------------------------------------- helpers
def log(*a):
    print("[%s]" % time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


def build_query(name, qtype=1, qid=0x1234):
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\x00" + struct.pack("!HH", qtype, 1)


def udp_ask(port, name, timeout=0.3):
    """Returns (rcode, ancount) or None. Loopback only."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.settimeout(timeout)
        qid = int.from_bytes(os.urandom(2), "big")
        s.sendto(build_query(name, 1, qid), (LOOP, port))
        while True:
            data, _ = s.recvfrom(4096)
            if len(data) >= 12 and int.from_bytes(data[:2], "big") == qid:
                return data[3] & 0x0F, int.from_bytes(data[6:8], "big")
    except OSError:
        return None
    finally:
        s.close()


def port_free(port):
    for typ in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        s = socket.socket(socket.AF_INET, typ)
        try:
            s.bind((LOOP, port))
        except OSError:
            return False
        finally:
            s.close()
    return True


def proc_table():
    """pid -> (ppid, utime+stime+cutime+cstime ticks) for all processes."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                s = f.read()
        except OSError:
            continue
        rest = s[s.rfind(")") + 2 :].split()
        # rest[0]=state, [1]=ppid, [11..14]=utime stime cutime cstime
        out[int(d)] = (int(rest[1]), sum(int(x) for x in rest[11:15]))
    return out


def cpu_busy():
    """per-cpu (busy, total, user, system, irq+softirq, steal) jiffies from /proc/stat."""
    res = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                parts = line.split()
                v = [int(x) for x in parts[1:]]
                idle = v[3] + v[4]
                total = sum(v[:8])  # user nice system idle iowait irq softirq steal
                res[parts[0]] = (total - idle, total, v[0] + v[1], v[2], v[5] + v[6], v[7])
    return res


def classify(tab, me, server_pid, knot_pid):
    """Split a proc_table into buckets: server tree, upstream tree, rest of our tree (dnsperf, driver),
    kernel threads, foreign (every other user-space process on the machine)."""
    kids = {}
    for p, (pp, _) in tab.items():
        kids.setdefault(pp, []).append(p)

    def tree(root):
        s, todo = set(), [root]
        while todo:
            p = todo.pop()
            if p in tab and p not in s:
                s.add(p)
                todo += kids.get(p, [])
        return s

    ours = tree(me)
    srv = tree(server_pid) if server_pid else set()
    up = tree(knot_pid) if knot_pid else set()
    b = {}
    for p, (pp, _) in tab.items():
        if p in srv:
            b[p] = "server"
        elif p in up:
            b[p] = "upstream"
        elif p in ours:
            b[p] = "client"
        elif p == 2 or pp == 2:
            b[p] = "kernel"
        else:
            b[p] = "foreign"
    return b


def bucket_delta(t0, t1, me, server_pid, knot_pid):
    """CPU seconds per bucket between two proc_table snapshots (a pid absent from t0 started in
    between, so all its time counts; a pid that died in between is lost)."""
    b = classify(t1, me, server_pid, knot_pid)
    out = {"server": 0.0, "upstream": 0.0, "client": 0.0, "kernel": 0.0, "foreign": 0.0}
    for p, (_, ticks) in t1.items():
        prev = t0.get(p)
        d = ticks - (prev[1] if prev else 0)
        if d > 0:
            out[b[p]] += d / CLK
    return out


class Sampler(threading.Thread):
    """Samples /proc every `interval` s from `skip` s after start until `length` s after start or stop().
    The CPU window is therefore strictly inside the load period."""

    def __init__(self, server_pid, knot_pid, skip, length, interval=0.5):
        super().__init__(daemon=True)
        self.server_pid, self.knot_pid = server_pid, knot_pid
        self.skip, self.length, self.interval = skip, length, interval
        self.ev = threading.Event()
        self.acc = {"server": 0.0, "upstream": 0.0, "client": 0.0, "kernel": 0.0, "foreign": 0.0}
        self.first = self.last = None
        self.foreign_top = {}
        self.me = os.getpid()

    def stop(self):
        self.ev.set()
        self.join()

    def run(self):
        t_start = time.time()
        if self.ev.wait(self.skip):
            return
        prev_tab, prev_cpu, t_prev = proc_table(), cpu_busy(), time.time()
        self.first = (t_prev, prev_cpu)
        while not self.ev.wait(self.interval):
            now = time.time()
            if now - t_start > self.length:
                break
            tab, cpu = proc_table(), cpu_busy()
            d = bucket_delta(prev_tab, tab, self.me, self.server_pid, self.knot_pid)
            for k in d:
                self.acc[k] += d[k]
            b = classify(tab, self.me, self.server_pid, self.knot_pid)
            for p, (_, ticks) in tab.items():
                if b[p] == "foreign":
                    dd = ticks - (prev_tab[p][1] if p in prev_tab else 0)
                    if dd > 0:
                        self.foreign_top[p] = self.foreign_top.get(p, 0) + dd / CLK
            prev_tab, t_prev = tab, now
            self.last = (now, cpu)

    def result(self):
        if not self.first or not self.last or self.last[0] <= self.first[0]:
            return None
        w = self.last[0] - self.first[0]
        c0, c1 = self.first[1], self.last[1]
        r = {
            "window_s": w,
            "cpu_pct": {k: 100.0 * v / w for k, v in self.acc.items()},
            "cpu_busy_pct": {
                c: 100.0 * (c1[c][0] - c0[c][0]) / max(1, c1[c][1] - c0[c][1]) for c in c1
            },
            "cpu_split_pct": {
                c: {
                    k: round(100.0 * (c1[c][i] - c0[c][i]) / max(1, c1[c][1] - c0[c][1]), 1)
                    for i, k in ((2, "user"), (3, "sys"), (4, "softirq"), (5, "steal"))
                }
                for c in c1
            },
        }
        top = sorted(self.foreign_top.items(), key=lambda kv: -kv[1])[:3]
        r["foreign_top"] = [
            (pid, _cmdline(pid), round(100.0 * s / w, 1)) for pid, s in top if s > 0
        ]
        return r


def _cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:100]
    except OSError:
        return "(exited)"


def foreign_load(seconds=1.0):
    """% of one core used by processes outside this harness over `seconds`."""
    me = os.getpid()
    t0 = proc_table()
    time.sleep(seconds)
    return 100.0 * bucket_delta(t0, proc_table(), me, None, None)["foreign"] / seconds


def wait_quiet(args):
    """Wait (bounded) until other processes on the machine use less than --max-foreign % CPU."""
    t0 = time.time()
    while True:
        f = foreign_load(1.0)
        if f <= args.max_foreign or time.time() - t0 >= args.quiet_timeout:
            return f, time.time() - t0
        time.sleep(1.0)


def knot_queries(ctx):
    try:
        out = subprocess.run(
            ["knotc", "-s", ctx["knot_sock"], "stats"], capture_output=True, text=True, timeout=5
        ).stdout
    except Exception:
        return None
    m = re.search(r"server-operation\[query\] = (\d+)", out)
    return int(m.group(1)) if m else 0


def run_bounded(argv, stdout_path, limit_s, cpu=None):
    """Run argv (optionally pinned), stdout+stderr to file, kill it if it exceeds limit_s.
    Returns (exit code, rusage)."""
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu)] + argv
    with open(stdout_path, "w") as out:
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    timer = threading.Timer(limit_s, lambda: _kill(p.pid))
    timer.start()
    try:
        _, status, ru = os.wait4(p.pid, 0)
    finally:
        timer.cancel()
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, ru


def _kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def parse_dnsperf(text):
    r = {}

    def num(pat, cast=float):
        m = re.search(pat, text)
        return cast(m.group(1)) if m else None

    r["sent"] = num(r"Queries sent:\s+(\d+)", int)
    r["completed"] = num(r"Queries completed:\s+(\d+)", int)
    r["lost"] = num(r"Queries lost:\s+(\d+)", int)
    r["qps"] = num(r"Queries per second:\s+([\d.]+)")
    r["runtime"] = num(r"Run time \(s\):\s+([\d.]+)")
    m = re.search(r"Average Latency \(s\):\s+([\d.]+) \(min ([\d.]+), max ([\d.]+)\)", text)
    if m:
        r["lat_avg"], r["lat_min"], r["lat_max"] = (float(x) for x in m.groups())
    r["lat_sd"] = num(r"Latency StdDev \(s\):\s+([\d.]+)")
    m = re.search(r"Response codes:\s+(.*)", text)
    r["rcodes"] = (
        dict((k, int(v)) for k, v in re.findall(r"([A-Z]+) (\d+) \(", m.group(1))) if m else {}
    )
    return r


def percentiles(path):
    lats, timeouts = [], 0
    with open(path) as f:
        for line in f:
            if line.startswith("> "):
                parts = line.split()
                if parts[1] == "T":
                    timeouts += 1
                    continue
                try:
                    lats.append(float(parts[-1]))
                except ValueError:
                    pass
    lats.sort()
    n = len(lats)
    if not n:
        return {"n": 0, "timeouts": timeouts}

    def pct(p):
        return lats[min(n - 1, int(round(p / 100.0 * (n - 1))))]

    return {
        "n": n,
        "timeouts": timeouts,
        "p50": pct(50),
        "p90": pct(90),
        "p99": pct(99),
        "p999": pct(99.9),
        "max": lats[-1],
        "mean": sum(lats) / n,
    }


# ----------------------------------------------------------------------------- functional checks
CHECKS = [
    # id, name, type, dig options, predicate(status, flags, answers) -> bool, description
    (
        "synth-A",
        "ecs-vpc.cn-hangzhou.aliyuncs.com",
        "A",
        [],
        lambda s, f, a: (
            s == "NOERROR" and sorted(x[-1] for x in a if x[3] == "A") == ["10.0.1.5", "10.0.2.5"]
        ),
        "synthesized A, both IPs",
    ),
    (
        "synth-A-tcp",
        "ecs-vpc.cn-hangzhou.aliyuncs.com",
        "A",
        ["+tcp"],
        lambda s, f, a: s == "NOERROR" and len(a) == 2,
        "synthesized A over TCP",
    ),
    (
        "fwd-A",
        "h00042.example.test",
        "A",
        [],
        lambda s, f, a: s == "NOERROR" and [x[-1] for x in a] == ["192.0.2.15"],
        "forwarded A",
    ),
    (
        "fwd-AAAA",
        "v6-1.example.test",
        "AAAA",
        [],
        lambda s, f, a: s == "NOERROR" and [x[-1] for x in a] == ["2001:db8::2"],
        "forwarded AAAA",
    ),
    (
        "fwd-MX",
        "example.test",
        "MX",
        [],
        lambda s, f, a: s == "NOERROR" and len(a) == 2,
        "forwarded MX",
    ),
    (
        "fwd-TXT",
        "txt-1.example.test",
        "TXT",
        [],
        lambda s, f, a: s == "NOERROR" and len(a) == 1,
        "forwarded TXT",
    ),
    (
        "nxdomain",
        "nope.example.test",
        "A",
        [],
        lambda s, f, a: s == "NXDOMAIN",
        "NXDOMAIN passes through",
    ),
    (
        "big-udp-tc",
        "big.example.test",
        "TXT",
        ["+noedns", "+ignore"],
        lambda s, f, a: "tc" in f,
        "1 KB TXT, UDP, no EDNS -> TC=1",
    ),
    (
        "big-edns",
        "big.example.test",
        "TXT",
        ["+bufsize=4096", "+ignore"],
        lambda s, f, a: "tc" not in f and len(a) == 1,
        "1 KB TXT, UDP, EDNS 4096 -> full",
    ),
    (
        "big-tcp",
        "big.example.test",
        "TXT",
        ["+tcp"],
        lambda s, f, a: s == "NOERROR" and len(a) == 1,
        "1 KB TXT over TCP",
    ),
]


def dig(port, name, qtype, opts):
    argv = [
        "dig",
        "@" + LOOP,
        "-p",
        str(port),
        name,
        qtype,
        "+time=1",
        "+tries=1",
        "+noall",
        "+comments",
        "+answer",
    ] + opts
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=5).stdout
    except subprocess.TimeoutExpired:
        return None, "", []
    m = re.search(r"status: (\w+)", out)
    fl = re.search(r";; flags: ([a-z ]*);", out)
    ans = [line.split() for line in out.splitlines() if line and not line.startswith(";")]
    return (m.group(1) if m else None), (fl.group(1).split() if fl else []), ans


def run_checks(port):
    res = {}
    for cid, name, qtype, opts, pred, _ in CHECKS:
        s, f, a = dig(port, name, qtype, opts)
        try:
            ok = bool(s) and pred(s, f, a)
        except Exception:
            ok = False
        res[cid] = {"ok": ok, "status": s, "flags": f, "answers": len(a)}
    return res


# ----------------------------------------------------------------------------- process control
def start_proc(argv, rundir, name, cpu):
    logf = open(os.path.join(rundir, name + ".log"), "w")
    p = subprocess.Popen(
        ["taskset", "-c", str(cpu)] + argv,
        stdout=logf,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=rundir,
    )
    logf.close()
    return p


def stop_proc(p, grace=5.0):
    if p.poll() is not None:
        return p.returncode
    p.send_signal(signal.SIGTERM)  # by PID (Popen.send_signal)
    try:
        return p.wait(grace)
    except subprocess.TimeoutExpired:
        p.kill()
        return p.wait(5)


def wait_ready(p, port, deadline_s=20.0):
    t0 = time.time()
    while time.time() - t0 < deadline_s:
        if p.poll() is not None:
            return "exited with %s" % p.returncode
        a = udp_ask(port, "ecs-vpc.cn-hangzhou.aliyuncs.com")
        b = udp_ask(port, "h00000.example.test")
        if a and b and a == (0, 2) and b == (0, 1):
            return None
        time.sleep(0.2)
    return "not ready after %.0fs (synth=%s fwd=%s)" % (deadline_s, a, b)


def start_upstream(args, rundir):
    d = os.path.join(rundir, "knot")
    os.makedirs(d, exist_ok=True)
    sock = os.path.join(d, "knot.sock")
    conf = os.path.join(d, "knot.conf")
    with open(conf, "w") as f:
        f.write(
            f"""server:
    listen: {LOOP}@{args.upstream_port}
    rundir: {d}
    udp-workers: {args.upstream_workers}
    tcp-workers: 1
    background-workers: 1
control:
    listen: {sock}
database:
    storage: {d}/db
log:
  - target: stderr
    any: notice
mod-stats:
  - id: default
    request-protocol: on
template:
  - id: default
    storage: {DATA}
    file: "%s.zone"
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
    semantic-checks: off
    global-module: mod-stats/default
zone:
  - domain: example.test
"""
        )
    if not port_free(args.upstream_port):
        sys.exit("port %d (upstream) is busy" % args.upstream_port)
    p = start_proc(["knotd", "-c", conf], d, "knotd", args.upstream_cpu)
    t0 = time.time()
    while time.time() - t0 < 20:
        r = udp_ask(args.upstream_port, "h00000.example.test")
        if r == (0, 1):
            return p, sock
        if p.poll() is not None:
            break
        time.sleep(0.2)
    stop_proc(p)
    sys.exit("knotd did not come up; see %s/knotd.log" % d)


# ----------------------------------------------------------------------------- one cell
def dnsperf_argv(args, port, fname, seconds, extra=()):
    return [
        "dnsperf",
        "-s",
        LOOP,
        "-p",
        str(port),
        "-d",
        os.path.join(DATA, fname),
        "-l",
        str(seconds),
        "-c",
        str(args.clients),
        "-q",
        str(args.outstanding),
        "-t",
        str(args.timeout),
    ] + list(extra)


def run_cell(args, ctx, peer, wl, celldir):
    tfile, wfile, lfile, _ = WORKLOADS[wl]
    res = {"peer": peer.name, "workload": wl}
    if not port_free(peer.port):
        res["error"] = "port %d busy before start" % peer.port
        return res
    argv = peer.build(peer, celldir, ctx)
    res["argv"] = argv
    p = start_proc(argv, celldir, "server", args.server_cpu)
    try:
        err = wait_ready(p, peer.port)
        if err:
            res["error"] = err
            return res
        if args.warmup > 0:
            run_bounded(
                dnsperf_argv(args, peer.port, wfile, args.warmup),
                os.path.join(celldir, "warmup.txt"),
                args.warmup + 30,
                args.client_cpu,
            )
        time.sleep(0.2)
        up0 = knot_queries(ctx)
        skip = min(1.0, args.duration * 0.2)
        smp = Sampler(p.pid, ctx["knot_pid"], skip, args.duration - 0.3)
        smp.start()
        rc, ru = run_bounded(
            dnsperf_argv(args, peer.port, tfile, args.duration),
            os.path.join(celldir, "dnsperf.txt"),
            args.duration + 60,
            args.client_cpu,
        )
        smp.stop()
        up1 = knot_queries(ctx)
        with open(os.path.join(celldir, "dnsperf.txt")) as f:
            perf = parse_dnsperf(f.read())
        res.update(perf)
        res["dnsperf_rc"] = rc
        res["dnsperf_cpu_s"] = ru.ru_utime + ru.ru_stime
        s = smp.result()
        if s:
            res["window_s"] = s["window_s"]
            res["server_cpu_pct"] = s["cpu_pct"]["server"]
            res["upstream_cpu_pct"] = s["cpu_pct"]["upstream"]
            res["client_cpu_pct"] = s["cpu_pct"]["client"]
            res["kernel_cpu_pct"] = s["cpu_pct"]["kernel"]
            res["foreign_cpu_pct"] = s["cpu_pct"]["foreign"]
            res["foreign_top"] = s["foreign_top"]
            res["cpu_busy_pct"] = s["cpu_busy_pct"]
            res["cpu_split_pct"] = s["cpu_split_pct"]
        if up0 is not None and up1 is not None and perf.get("completed"):
            res["upstream_queries"] = up1 - up0
            res["upstream_per_query"] = (up1 - up0) / perf["completed"]
        if perf.get("qps") is None:
            res["error"] = "dnsperf produced no statistics (rc %s)" % rc
            return res
        if p.poll() is not None:
            res["error"] = "server died during run (rc %s)" % p.returncode
            return res
        if args.lat_qps > 0 and args.lat_duration > 0:
            lpath = os.path.join(celldir, "latency-v.txt")
            smp = Sampler(p.pid, ctx["knot_pid"], 0.3, args.lat_duration - 0.3)
            smp.start()
            run_bounded(
                dnsperf_argv(
                    args, peer.port, lfile, args.lat_duration, ["-Q", str(args.lat_qps), "-v"]
                ),
                lpath,
                args.lat_duration + 60,
                args.client_cpu,
            )
            smp.stop()
            with open(lpath) as f:
                txt = f.read()
            lat = percentiles(lpath)
            lat["qps"] = parse_dnsperf(txt).get("qps")
            s = smp.result()
            if s:
                lat["foreign_cpu_pct"] = s["cpu_pct"]["foreign"]
                lat["server_cpu_pct"] = s["cpu_pct"]["server"]
            res["lat"] = lat
            if not args.keep_verbose:
                os.unlink(lpath)
                with open(lpath + ".summary", "w") as f:
                    f.write(txt[txt.find("Statistics:") :])
    finally:
        res["server_rc"] = stop_proc(p)
        if not port_free(peer.port):
            time.sleep(1)
    return res


# ----------------------------------------------------------------------------- report
def fmt_qps(v):
    return "-" if v is None else ("%.0f" % v if v < 1000 else "%.1fk" % (v / 1000.0))


def fmt_us(v):
    return "-" if v is None else "%.0f" % (v * 1e6)


MAX_STEAL = 2.0  # % of a CPU the hypervisor may take from a measurement before it is disturbed


def stolen(r):
    """The most CPU time the hypervisor took (steal, /proc/stat) from either CPU, in %: other
    guests on the host, invisible to the foreign-process check, which skew one cell."""
    return max((v.get("steal", 0) for v in r.get("cpu_split_pct", {}).values()), default=0)


def dirty(r, limit):
    return (
        r.get("foreign_cpu_pct", 0) > limit
        or r.get("lat", {}).get("foreign_cpu_pct", 0) > limit
        or stolen(r) > MAX_STEAL
    )


def make_report(meta, results, peers, workloads, ref):
    cell = {(r["peer"], r["workload"]): r for r in results}
    lim = meta["max_foreign"]
    out = []
    out.append("Run %s - %s" % (meta["stamp"], meta["host"]))
    out.append("")
    out.append(
        "duration %ss (warm-up %ss), dnsperf -c %s -q %s; server on CPU %s, dnsperf on CPU %s, upstream "
        "(knotd, %s UDP worker) on CPU %s"
        % (
            meta["duration"],
            meta["warmup"],
            meta["clients"],
            meta["outstanding"],
            meta["server_cpu"],
            meta["client_cpu"],
            meta["upstream_workers"],
            meta["upstream_cpu"],
        )
    )
    out.append("")
    out.append("Workloads: " + "; ".join("%s = %s" % kv for kv in meta["workloads"].items()))
    out.append("")

    def table(title, fn, note=None):
        out.append("### " + title)
        if note:
            out.append("")
            out.append(note)
        out.append("")
        out.append("| peer | " + " | ".join(workloads) + " |")
        out.append("|---|" + "---|" * len(workloads))
        for pn in peers:
            row = []
            for w in workloads:
                r = cell.get((pn, w))
                if r is None:
                    row.append("")
                elif r.get("error"):
                    row.append("ERR")
                else:
                    try:
                        row.append(fn(r, w))
                    except (KeyError, TypeError):
                        row.append("?")
            out.append("| %s | %s |" % (pn, " | ".join(row)))
        out.append("")

    def qps_cell(r, w):
        s = fmt_qps(r.get("qps"))
        rr = cell.get((ref, w))
        if r["peer"] == ref:
            s += " (1.00x)"
        elif rr and not rr.get("error") and rr.get("qps"):
            s += " (%.2fx)" % (r["qps"] / rr["qps"])
        bad = (r.get("lost") or 0) + sum(
            v for k, v in r.get("rcodes", {}).items() if k != "NOERROR"
        )
        if r.get("sent") and bad > 0.001 * r["sent"]:
            s += " !"
        if r.get("foreign_cpu_pct", 0) > lim or stolen(r) > MAX_STEAL:
            s += " ~"
        busy = r.get("cpu_busy_pct", {})
        if busy.get("cpu%s" % meta["client_cpu"], 0) >= 95:
            s += " C"
        elif busy.get("cpu%s" % meta["server_cpu"], 0) >= 95:
            s += " S"
        return s

    table(
        "Throughput: QPS (ratio to %s in this run)" % ref,
        qps_cell,
        "Closed loop, %s outstanding queries. '!' = more than 0.1%% lost or non-NOERROR answers; "
        "'~' = other processes on the machine used more than %s%% of a core during the measurement, "
        "or the hypervisor took more than %s%% of a CPU (steal). "
        "S = the server CPU was >=95%% busy (server-bound); C = the dnsperf/upstream CPU was >=95%% busy, "
        "so the figure is the load generator's ceiling, not the server's (see the per-core table)."
        % (meta["outstanding"], lim, MAX_STEAL),
    )
    table(
        "Server efficiency: QPS per fully busy server CPU (QPS / CPU%s busy fraction)"
        % meta["server_cpu"],
        lambda r, w: fmt_qps(
            r["qps"] / max(0.01, r["cpu_busy_pct"]["cpu%s" % meta["server_cpu"]] / 100.0)
        ),
        "An extrapolation, useful where a run is client-bound (C): it charges the server all of its CPU's "
        "busy time, softirq included. Assumes cost per query stays flat up to saturation.",
    )
    table(
        "Mean latency at saturation (us)",
        lambda r, w: fmt_us(r.get("lat_avg")),
        "Same closed-loop run; by Little's law this is about outstanding/QPS, i.e. mostly queueing.",
    )
    if meta.get("lat_qps"):
        table(
            "Latency at a fixed %s QPS: p50 / p99 / p99.9 (us)" % meta["lat_qps"],
            lambda r, w: (
                (
                    "%s / %s / %s"
                    % (
                        fmt_us(r["lat"].get("p50")),
                        fmt_us(r["lat"].get("p99")),
                        fmt_us(r["lat"].get("p999")),
                    )
                    + (" T%d" % r["lat"]["timeouts"] if r["lat"].get("timeouts") else "")
                    + (" ~" if r["lat"].get("foreign_cpu_pct", 0) > lim else "")
                )
                if r.get("lat")
                else "-"
            ),
            "dnsperf -Q %s -v for %ss on a fresh part of the workload (after the throughput run); "
            "T<n> = timeouts." % (meta["lat_qps"], meta["lat_duration"]),
        )
    table(
        "CPU in the measurement window, % of one core: server / dnsperf+driver / upstream",
        lambda r, w: (
            "%.0f / %.0f / %.0f" % (r["server_cpu_pct"], r["client_cpu_pct"], r["upstream_cpu_pct"])
        ),
        "Per-process CPU (user+sys, all threads) sampled from /proc inside the load period. "
        "Loopback softirq work is not charged to any process; see the busy table.",
    )
    table(
        "Whole-CPU busy %% (CPU%s / CPU%s) and foreign load (%% of a core)"
        % (meta["server_cpu"], meta["client_cpu"]),
        lambda r, w: (
            "%.0f / %.0f, f=%.0f"
            % (
                r["cpu_busy_pct"].get("cpu%s" % meta["server_cpu"], 0),
                r["cpu_busy_pct"].get("cpu%s" % meta["client_cpu"], 0),
                r.get("foreign_cpu_pct", 0),
            )
        ),
        "From /proc/stat (includes irq/softirq). f = CPU used by processes outside this harness.",
    )
    table(
        "Where CPU%s went: user / sys / softirq %% of that CPU" % meta["server_cpu"],
        lambda r, w: (
            "%.0f / %.0f / %.0f"
            % tuple(
                r["cpu_split_pct"]["cpu%s" % meta["server_cpu"]][k]
                for k in ("user", "sys", "softirq")
            )
        ),
        "From /proc/stat over the same window. user = the server's own code (and its libraries); "
        "sys = syscalls (recvfrom/sendto, epoll); softirq = loopback packet delivery.",
    )
    table(
        "Upstream queries per client query (knotd counters)",
        lambda r, w: (
            "-" if r.get("upstream_per_query") is None else "%.3f" % r["upstream_per_query"]
        ),
        "0 = everything answered locally or from cache; 1 = every query forwarded.",
    )
    return "\n".join(out)


def checks_report(checks, peers):
    if not checks:
        return ""
    out = [
        "### Functional checks (dig)",
        "",
        "| peer | " + " | ".join(c[0] for c in CHECKS) + " |",
        "|---|" + "---|" * len(CHECKS),
    ]
    for pn in peers:
        c = checks.get(pn)
        if not c:
            continue
        if "error" in c:
            out.append("| %s | %s |" % (pn, c["error"]))
            continue
        out.append(
            "| %s | %s |"
            % (
                pn,
                " | ".join(
                    (
                        "ok"
                        if c[k]["ok"]
                        else "FAIL(%s%s)" % (c[k]["status"], ",tc" if "tc" in c[k]["flags"] else "")
                    )
                    for k, *_ in CHECKS
                ),
            )
        )
    out.append("")
    out.append("; ".join("%s: %s" % (c[0], c[5]) for c in CHECKS))
    out.append("")
    return "\n".join(out)


# ----------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--peers",
        default=",".join(DEFAULT_PEERS),
        help="comma list of built-in peers (default: %(default)s); 'none' for candidates only",
    )
    ap.add_argument(
        "--candidate",
        action="append",
        default=[],
        metavar="NAME=COMMAND",
        help="extra server to benchmark, e.g. 'pldns=pldns serve --listen {listen} --upstream "
        "{upstream} --hosts {synth_hosts}'. Placeholders: {port} {listen} {upstream} "
        "{upstream_host} {upstream_port} {synth_json} {synth_hosts} {rundir} {bench}. "
        "It must run in the foreground, serve UDP on 127.0.0.1:{port} and exit on SIGTERM.",
    )
    ap.add_argument("--candidate-port", type=int, default=5305)
    ap.add_argument(
        "--workloads",
        default=",".join(DEFAULT_WORKLOADS),
        help="comma list of " + ",".join(WORKLOADS),
    )
    ap.add_argument("--duration", type=int, default=10, help="seconds per throughput run")
    ap.add_argument(
        "--warmup", type=int, default=2, help="seconds of warm-up load before each measured run"
    )
    ap.add_argument("--clients", type=int, default=10, help="dnsperf -c (client sockets)")
    ap.add_argument("--outstanding", type=int, default=100, help="dnsperf -q")
    ap.add_argument("--timeout", type=int, default=2, help="dnsperf -t seconds")
    ap.add_argument(
        "--lat-qps", type=int, default=2000, help="fixed rate for the latency run (0 = skip)"
    )
    ap.add_argument("--lat-duration", type=int, default=5)
    ap.add_argument("--keep-verbose", action="store_true", help="keep per-query dnsperf -v output")
    ap.add_argument("--no-checks", action="store_true", help="skip the dig functional checks")
    ap.add_argument("--ref", default="dnsdist", help="peer whose QPS is the 1.00x reference")
    ap.add_argument("--server-cpu", default="0")
    ap.add_argument("--client-cpu", default="1")
    ap.add_argument("--upstream-cpu", default="1")
    ap.add_argument("--upstream-port", type=int, default=5300)
    ap.add_argument("--upstream-workers", type=int, default=1)
    ap.add_argument("--out", help="output directory (default runs/<timestamp>)")
    ap.add_argument(
        "--max-foreign",
        type=float,
        default=5.0,
        help="%% of one core that processes outside the harness may use during a measurement "
        "before the cell is retried / flagged (default %(default)s)",
    )
    ap.add_argument(
        "--quiet-timeout",
        type=float,
        default=60.0,
        help="seconds to wait for the machine to go quiet before each cell",
    )
    ap.add_argument(
        "--retries",
        type=int,
        default=2,
        help="re-runs of a cell disturbed by foreign load or hypervisor steal",
    )
    args = ap.parse_args()

    for tool in ("dnsperf", "knotd", "knotc", "taskset", "dig"):
        if not shutil.which(tool):
            sys.exit("missing %s (see README: apt-get install ...)" % tool)
    for needed in ("q-miss-main.txt", "q-zipf.txt"):
        if not os.path.exists(os.path.join(DATA, needed)):
            sys.exit("no query data (%s): run ./gen_data.py first (run.sh does it)" % needed)

    avail = builtin_peers()
    peers = [] if args.peers in ("", "none") else args.peers.split(",")
    for pn in peers:
        if pn not in avail:
            sys.exit("unknown peer %s; known: %s" % (pn, ", ".join(avail)))
    for i, c in enumerate(args.candidate):
        name, _, cmd = c.partition("=")
        if not cmd:
            sys.exit("--candidate wants NAME=COMMAND")
        avail[name] = Peer(
            name, args.candidate_port + i, "candidate: " + cmd, candidate_build(cmd), "?"
        )
        peers.append(name)
    workloads = args.workloads.split(",")
    for w in workloads:
        if w not in WORKLOADS:
            sys.exit("unknown workload %s" % w)

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    rundir = os.path.abspath(args.out or os.path.join(BENCH, "runs", stamp))
    os.makedirs(rundir, exist_ok=True)
    meta = {
        "stamp": stamp,
        "host": "%s, %d CPUs, %s" % (os.uname().release, os.cpu_count(), sys.platform),
        "duration": args.duration,
        "warmup": args.warmup,
        "clients": args.clients,
        "outstanding": args.outstanding,
        "server_cpu": args.server_cpu,
        "client_cpu": args.client_cpu,
        "upstream_cpu": args.upstream_cpu,
        "upstream_workers": args.upstream_workers,
        "lat_qps": args.lat_qps if args.lat_duration > 0 else 0,
        "lat_duration": args.lat_duration,
        "max_foreign": args.max_foreign,
        "peers": {pn: avail[pn].desc for pn in peers},
        "workloads": {w: WORKLOADS[w][3] for w in workloads},
        "argv": sys.argv,
    }
    try:
        meta["versions"] = {
            "dnsperf": subprocess.run(["dnsperf", "-h"], capture_output=True, text=True)
            .stderr.split("Version ")[-1]
            .strip(),
            "dnsdist": subprocess.run(
                ["dnsdist", "--version"], capture_output=True, text=True
            ).stdout.split("\n")[0],
            "unbound": subprocess.run(
                ["unbound", "-V"], capture_output=True, text=True
            ).stdout.split("\n")[0],
            "dnsmasq": subprocess.run(
                ["dnsmasq", "--version"], capture_output=True, text=True
            ).stdout.split("\n")[0],
            "knotd": subprocess.run(
                ["knotd", "--version"], capture_output=True, text=True
            ).stdout.strip(),
        }
    except Exception:
        pass
    try:
        os.sched_setaffinity(0, {int(args.client_cpu)})
    except (ValueError, OSError):
        pass
    log("output in", rundir)
    knot, ksock = start_upstream(args, rundir)
    ctx = {
        "upstream": "%s:%d" % (LOOP, args.upstream_port),
        "knot_sock": ksock,
        "knot_pid": knot.pid,
    }
    results, checks = [], {}
    stopping = []

    def on_sig(signum, frame):
        stopping.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sig)
    try:
        for pn in peers:
            peer = avail[pn]
            pdir = os.path.join(rundir, pn)
            os.makedirs(pdir, exist_ok=True)
            if not args.no_checks:
                if not port_free(peer.port):
                    checks[pn] = {"error": "port %d busy" % peer.port}
                else:
                    p = start_proc(
                        peer.build(peer, pdir, ctx), pdir, "checks-server", args.server_cpu
                    )
                    try:
                        err = wait_ready(p, peer.port)
                        checks[pn] = {"error": err} if err else run_checks(peer.port)
                    finally:
                        stop_proc(p)
                log(
                    pn,
                    "checks:",
                    ("error" in checks[pn] and checks[pn]["error"])
                    or " ".join(
                        "%s=%s" % (k, "ok" if v["ok"] else "FAIL") for k, v in checks[pn].items()
                    ),
                )
            for w in workloads:
                attempts = []
                for attempt in range(1 + args.retries):
                    cdir = os.path.join(pdir, w if attempt == 0 else "%s.retry%d" % (w, attempt))
                    os.makedirs(cdir, exist_ok=True)
                    fl, waited = wait_quiet(args)
                    if waited > 1.5:
                        log(
                            "waited %.0fs for other processes to go quiet (now %.0f%% of a core)"
                            % (waited, fl)
                        )
                    r = run_cell(args, ctx, peer, w, cdir)
                    r["attempt"] = attempt
                    r["pre_foreign_cpu_pct"] = fl
                    attempts.append(r)
                    log(
                        "%-15s %-6s qps=%s avg=%sus srv=%.0f%% cli=%.0f%% up=%.0f%% foreign=%.0f%% up/q=%s "
                        "lost=%s rcodes=%s %s %s"
                        % (
                            pn,
                            w,
                            fmt_qps(r.get("qps")),
                            fmt_us(r.get("lat_avg")),
                            r.get("server_cpu_pct", 0),
                            r.get("client_cpu_pct", 0),
                            r.get("upstream_cpu_pct", 0),
                            r.get("foreign_cpu_pct", 0),
                            "%.3f" % r["upstream_per_query"]
                            if r.get("upstream_per_query") is not None
                            else "-",
                            r.get("lost"),
                            r.get("rcodes"),
                            (
                                "p50/p99=%s/%sus"
                                % (fmt_us(r["lat"].get("p50")), fmt_us(r["lat"].get("p99")))
                            )
                            if r.get("lat")
                            else "",
                            r.get("error", ""),
                        )
                    )
                    if r.get("error") or not dirty(r, args.max_foreign):
                        break
                    if r.get("foreign_top"):
                        log("  foreign load:", r["foreign_top"])
                ok = [a for a in attempts if not a.get("error")]
                best = (
                    min(
                        ok,
                        key=lambda a: (
                            a.get("foreign_cpu_pct", 0) + a.get("lat", {}).get("foreign_cpu_pct", 0)
                        ),
                    )
                    if ok
                    else attempts[-1]
                )
                best["attempts"] = len(attempts)
                results.append(best)
                with open(os.path.join(rundir, "results.json"), "w") as f:
                    json.dump({"meta": meta, "results": results, "checks": checks}, f, indent=1)
    except KeyboardInterrupt:
        log("interrupted; stopping")
    finally:
        stop_proc(knot)
    report = (
        make_report(meta, results, peers, workloads, args.ref) + "\n" + checks_report(checks, peers)
    )
    with open(os.path.join(rundir, "report.md"), "w") as f:
        f.write(report + "\n")
    with open(os.path.join(rundir, "results.json"), "w") as f:
        json.dump({"meta": meta, "results": results, "checks": checks}, f, indent=1)
    print(report)
    if stopping:
        sys.exit(1)


if __name__ == "__main__":
    main()

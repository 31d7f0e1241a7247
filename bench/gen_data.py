#!/usr/bin/env python3
"""Generate the upstream zone, the synthesized-name table and dnsperf query files.

Everything is written under OUTDIR (default: ./data).  Deterministic (seeded), stdlib only.

Files:
  example.test.zone   upstream zone: SOA/NS, N A records h00000..h{N-1}, a few AAAA/TXT/MX,
                      one large TXT (big.example.test, ~1000 bytes of RDATA -> >512 B answer),
                      and a wildcard *.miss.example.test (so unique names always resolve).
  synth.json          {"name.": ["10.0.1.5", "10.0.2.5"], ...} - the names a proxy answers itself
  synth.hosts         same table in /etc/hosts format
  q-synth.txt         only synthesized names (type A), shuffled
  q-pass.txt          uniform random over the N zone records (type A): cacheable working set of N
  q-mix.txt           MIX_SYNTH_PCT % synthesized, the rest pass-through (random h-names)
  q-zipf.txt          pass-through over the N zone records, Zipf-like popularity (weight of the
                      k-th most popular name 1/k^ZIPF_S, names in random rank order): the
                      repeat pattern of real DNS traffic, for comparing caches
  q-miss-{main,warm,lat}.txt
                      every line a distinct name under miss.example.test -> a cache can never hit;
                      separate files (distinct label prefixes) for warm-up, throughput and latency
                      passes so one pass never warms the cache for the next.
"""

import argparse
import json
import os
import random

SYNTH = {
    "ecs-vpc.cn-hangzhou.aliyuncs.com.": ["10.0.1.5", "10.0.2.5"],
    "eci-vpc.cn-hangzhou.aliyuncs.com.": ["10.0.1.6", "10.0.2.6"],
    "vpc-vpc.cn-hangzhou.aliyuncs.com.": ["10.0.1.7", "10.0.2.7"],
    "acs-vpc.cn-hangzhou.aliyuncs.com.": ["10.0.1.8", "10.0.2.8"],
}
ZONE = "example.test."


def host_ip(i):
    # documentation ranges only (TEST-NET-1/2/3); these are answer data, never traffic targets
    nets = ["192.0.2", "198.51.100", "203.0.113"]
    return "%s.%d" % (nets[i % 3], 1 + (i // 3) % 250)


def write_zone(path, n):
    lines = [
        "$ORIGIN %s" % ZONE,
        "$TTL 3600",
        "@ IN SOA ns1.example.test. hostmaster.example.test. 1 3600 900 604800 300",
        "@ IN NS ns1",
        "ns1 IN A 127.0.0.1",
    ]
    for i in range(n):
        lines.append("h%05d IN A %s" % (i, host_ip(i)))
    # a few other types
    for i in range(5):
        lines.append("v6-%d IN AAAA 2001:db8::%x" % (i, i + 1))
        lines.append('txt-%d IN TXT "benchmark record %d"' % (i, i))
    lines.append("@ IN MX 10 mx1")
    lines.append("@ IN MX 20 mx2")
    lines.append("mx1 IN A 192.0.2.25")
    lines.append("mx2 IN A 192.0.2.26")
    lines.append('@ IN TXT "v=spf1 -all"')
    # one big TXT: 5 strings x 200 chars = ~1 KB rdata -> UDP answer without EDNS gets TC=1
    chunks = " ".join('"%s"' % (chr(ord("a") + k) * 200) for k in range(5))
    lines.append("big IN TXT %s" % chunks)
    # wildcard for the always-miss workload
    lines.append("*.miss IN A 192.0.2.250")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def write_zipf(path, n, lines, s, rnd):
    """`lines` queries over the n zone names, the k-th most popular with weight 1/k^s."""
    ranked = list(range(n))
    rnd.shuffle(ranked)
    cum, total = [], 0.0
    for k in range(1, n + 1):
        total += 1.0 / k**s
        cum.append(total)
    picks = rnd.choices(ranked, cum_weights=cum, k=lines)
    with open(path, "w") as f:
        f.writelines("h%05d.%s A\n" % (i, ZONE) for i in picks)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--outdir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
    )
    ap.add_argument("--records", type=int, default=10000)
    ap.add_argument("--lines", type=int, default=200000, help="lines in q-synth/q-pass/q-mix")
    ap.add_argument(
        "--miss-lines",
        type=int,
        default=2000000,
        help="distinct names in q-miss-main.txt (must exceed QPS*seconds or names repeat)",
    )
    ap.add_argument("--mix-synth-pct", type=float, default=90.0)
    ap.add_argument("--zipf-s", type=float, default=1.0, help="Zipf exponent of q-zipf.txt")
    ap.add_argument("--seed", type=int, default=42)
    a = ap.parse_args()
    os.makedirs(a.outdir, exist_ok=True)
    rnd = random.Random(a.seed)

    write_zone(os.path.join(a.outdir, "example.test.zone"), a.records)
    with open(os.path.join(a.outdir, "synth.json"), "w") as f:
        json.dump(SYNTH, f, indent=1)
    with open(os.path.join(a.outdir, "synth.hosts"), "w") as f:
        for name, ips in SYNTH.items():
            for ip in ips:
                f.write("%s %s\n" % (ip, name.rstrip(".")))

    names = list(SYNTH)

    def w(fname, gen):
        with open(os.path.join(a.outdir, fname), "w") as f:
            f.writelines(gen)

    w("q-synth.txt", ("%s A\n" % rnd.choice(names) for _ in range(a.lines)))
    w("q-pass.txt", ("h%05d.%s A\n" % (rnd.randrange(a.records), ZONE) for _ in range(a.lines)))
    thr = a.mix_synth_pct / 100.0

    def mix():
        for _ in range(a.lines):
            if rnd.random() < thr:
                yield "%s A\n" % rnd.choice(names)
            else:
                yield "h%05d.%s A\n" % (rnd.randrange(a.records), ZONE)

    w("q-mix.txt", mix())
    write_zipf(os.path.join(a.outdir, "q-zipf.txt"), a.records, a.lines, a.zipf_s, rnd)
    for kind, prefix, count in (
        ("main", "u", a.miss_lines),
        ("warm", "w", 200000),
        ("lat", "l", 200000),
    ):
        w("q-miss-%s.txt" % kind, ("%s%d.miss.%s A\n" % (prefix, i, ZONE) for i in range(count)))
    print("data written to", a.outdir)


if __name__ == "__main__":
    main()

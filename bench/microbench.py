#!/usr/bin/env python3
"""Per-query cost of the Python building blocks, without any network: run with the venv's python,
pinned (taskset -c 0 .venv/bin/python microbench.py).  Explains the pybase numbers."""

import json
import os
import sys
import timeit

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers"))
import pybase
from dnslib import QTYPE, RR, A, DNSRecord

BENCH = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(BENCH, "data", "synth.json")) as f:
    SYNTH = json.load(f)

q_synth = bytes(DNSRecord.question("ecs-vpc.cn-hangzhou.aliyuncs.com", "A").pack())
q_fwd = bytes(DNSRecord.question("h01234.example.test", "A").pack())
ans = DNSRecord.parse(q_fwd).reply()
ans.add_answer(RR("h01234.example.test", QTYPE.A, rdata=A("192.0.2.1"), ttl=3600))
a_fwd = bytes(ans.pack())


class T:  # fake transport
    def sendto(self, data, addr=None):
        pass


def mk(cls):
    fr = cls(SYNTH)
    fr.transport = T()
    fr.up = T()
    return fr


fd, fr = mk(pybase.FrontDnslib), mk(pybase.FrontRaw)
up = pybase.Upstream(fd)
addr = ("127.0.0.1", 40000)


def build_reply(req):
    rep = req.reply()
    for ip in SYNTH["ecs-vpc.cn-hangzhou.aliyuncs.com."]:
        rep.add_answer(RR(req.q.qname, QTYPE.A, rdata=A(ip), ttl=60))
    return rep.pack()


req = DNSRecord.parse(q_synth)
cases = [
    ("dnslib DNSRecord.parse(query)", lambda: DNSRecord.parse(q_synth)),
    ("dnslib reply()+2x add_answer+pack()", lambda: build_reply(req)),
    ("dnslib DNSRecord.parse(40-byte answer)", lambda: DNSRecord.parse(a_fwd)),
    (
        "pybase dnslib: synthesized query, whole handler",
        lambda: fd.datagram_received(q_synth, addr),
    ),
    ("pybase dnslib: forwarded query, whole handler", lambda: fd.datagram_received(q_fwd, addr)),
    ("pybase raw: synthesized query, whole handler", lambda: fr.datagram_received(q_synth, addr)),
    ("pybase raw: forwarded query, whole handler", lambda: fr.datagram_received(q_fwd, addr)),
    (
        "pybase: upstream answer -> client (ID map)",
        lambda: (
            fd.forward(q_fwd, addr),
            up.datagram_received(
                bytes([(fd.next_id - 1) >> 8 & 255, (fd.next_id - 1) & 255]) + a_fwd[2:], None
            ),
        ),
    ),
]
print("python", sys.version.split()[0])
for name, fn in cases:
    n = 20000
    best = min(timeit.repeat(fn, number=n, repeat=5)) / n
    print("%-52s %7.2f us" % (name, best * 1e6))

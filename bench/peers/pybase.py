#!/usr/bin/env python3
"""Minimal Python DNS forwarder - a *baseline*, not the product.

UDP only.  One listening socket, one upstream socket, 16-bit ID remapping.
  * queries whose (qname, qtype=A) is in the synth table are answered locally
  * everything else is forwarded to the upstream with a fresh ID; the upstream reply is
    sent back to the original client with the original ID restored (reply bytes untouched).
No cache, no TCP, no EDNS in synthesized answers, no retries, no timeouts for the ID map
(the map is keyed by the 16-bit ID, so it can never hold more than 65536 entries; a stale
entry is simply overwritten when its ID comes round again).

--parse dnslib : every query is parsed with dnslib.DNSRecord.parse and synthesized answers
                 are built with dnslib (what a straightforward implementation would do).
--parse raw    : the qname is located by walking the labels by hand and synthesized
                 answers are pre-built byte templates (only ID/flags/question are patched in);
                 shows what the interpreter costs without dnslib in the hot path.
--loop asyncio|uvloop
"""

import argparse
import asyncio
import json
import signal
import socket
import struct


def hostport(s, default_port):
    host, _, port = s.rpartition(":")
    if not host:
        return s, default_port
    return host.strip("[]"), int(port)


class Upstream(asyncio.DatagramProtocol):
    def __init__(self, front):
        self.front = front

    def datagram_received(self, data, addr):
        if len(data) < 12:
            return
        ent = self.front.pending.pop((data[0] << 8) | data[1], None)
        if ent is None:
            return  # late or unknown reply
        oid, caddr = ent
        self.front.transport.sendto(oid + data[2:], caddr)

    def error_received(self, exc):
        pass


class FrontBase(asyncio.DatagramProtocol):
    def __init__(self, synth):
        self.synth = synth
        self.pending = {}
        self.next_id = 0
        self.transport = None
        self.up = None

    def connection_made(self, transport):
        self.transport = transport

    def error_received(self, exc):
        pass

    def forward(self, data, addr):
        nid = self.next_id
        self.next_id = (nid + 1) & 0xFFFF
        self.pending[nid] = (data[:2], addr)
        self.up.sendto(struct.pack("!H", nid) + data[2:])


class FrontDnslib(FrontBase):
    def __init__(self, synth):
        super().__init__(synth)
        from dnslib import QTYPE, RR, A, DNSRecord

        self.DNSRecord, self.RR, self.A, self.QA = DNSRecord, RR, A, QTYPE.A
        self.table = {k.lower(): v for k, v in synth.items()}

    def datagram_received(self, data, addr):
        try:
            req = self.DNSRecord.parse(data)
        except Exception:
            return
        if req.header.qr or not req.questions:
            return
        q = req.q
        if q.qtype == self.QA:
            ips = self.table.get(str(q.qname).lower())
            if ips is not None:
                rep = req.reply()
                for ip in ips:
                    rep.add_answer(self.RR(q.qname, self.QA, rdata=self.A(ip), ttl=60))
                self.transport.sendto(rep.pack(), addr)
                return
        self.forward(data, addr)


def wire_name(name):
    out = b""
    for label in name.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode("ascii")
    return out + b"\x00"


class FrontRaw(FrontBase):
    def __init__(self, synth):
        super().__init__(synth)
        # key: lower-cased wire-format qname; value: (ancount bytes, answer section bytes)
        self.table = {}
        for name, ips in synth.items():
            ans = b"".join(
                b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + socket.inet_aton(ip)
                for ip in ips
            )
            self.table[wire_name(name.lower())] = (struct.pack("!HHHH", 1, len(ips), 0, 0), ans)

    def datagram_received(self, data, addr):
        n = len(data)
        if n < 12 or data[2] & 0x80:  # runt or a response: drop
            return
        if n < 17 or data[4] != 0 or data[5] != 1:  # not exactly one question: not ours
            self.forward(data, addr)
            return
        i = 12
        while True:
            if i >= n:
                return
            ln = data[i]
            if ln == 0:
                break
            if ln & 0xC0:  # compression pointer in a question: leave it to upstream
                self.forward(data, addr)
                return
            i += ln + 1
        qend = i + 1
        if qend + 4 > n:
            return
        if data[qend] == 0 and data[qend + 1] == 1:  # qtype A
            hit = self.table.get(data[12:qend].lower())
            if hit is not None:
                counts, ans = hit
                flags = bytes((0x84 | (data[2] & 0x01), 0x80))  # QR AA (+RD copied), RA
                self.transport.sendto(data[:2] + flags + counts + data[12 : qend + 4] + ans, addr)
                return
        self.forward(data, addr)


async def main_async(a):
    loop = asyncio.get_running_loop()
    with open(a.synth) as f:
        synth = json.load(f)
    front = (FrontRaw if a.parse == "raw" else FrontDnslib)(synth)
    lhost, lport = hostport(a.listen, 53)
    uhost, uport = hostport(a.upstream, 53)
    ftr, _ = await loop.create_datagram_endpoint(lambda: front, local_addr=(lhost, lport))
    utr, _ = await loop.create_datagram_endpoint(
        lambda: Upstream(front), remote_addr=(uhost, uport)
    )
    front.up = utr
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(
        "pybase listening on %s:%d parse=%s loop=%s"
        % (lhost, lport, a.parse, type(loop).__module__),
        flush=True,
    )
    await stop.wait()
    ftr.close()
    utr.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", default="127.0.0.1:5304")
    ap.add_argument("--upstream", default="127.0.0.1:5300")
    ap.add_argument("--synth", required=True, help="JSON {name: [ipv4, ...]}")
    ap.add_argument("--parse", choices=("dnslib", "raw"), default="dnslib")
    ap.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    a = ap.parse_args()
    if a.loop == "uvloop":
        import uvloop

        uvloop.install()
    asyncio.run(main_async(a))


if __name__ == "__main__":
    main()

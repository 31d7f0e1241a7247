"""Differential: thousands of varied queries through pldns (cold, then warm) against unbound
as a real authoritative server (local-data), every reply compared with unbound's own answer.

The cache must never return an answer for a different question: each reply must echo the
query's question byte for byte and carry the same RCODE and the same RRsets (names compared
case-insensitively, TTLs at most the server's) as unbound gives for that exact question.
"""

from __future__ import annotations

import random
import subprocess
import time
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from pldns.dns.wire import scan_query
from tests.fakes.peers import Unbound, unbound_server
from tests.fakes.proc import free_port

ZONE = "diff.test"
NAMES = 300
QUERIES = 3000
TYPES = ("A", "AAAA", "TXT", "MX", "CNAME", "SOA", "NS")
FLAGS = ("plain", "edns", "do", "cd", "nord")
SOA_MINIMUM = 45


def zone_data(rng: random.Random) -> list[str]:
    lines = [
        f'  local-data: "{ZONE}. 3600 IN SOA ns1.{ZONE}. host.{ZONE}. 7 3600 600 86400 '
        f'{SOA_MINIMUM}"',
        f'  local-data: "{ZONE}. 3600 IN NS ns1.{ZONE}."',
        f'  local-data: "ns1.{ZONE}. 3600 IN A 192.0.2.53"',
    ]
    for i in range(NAMES):
        name = f"h{i}.{ZONE}."
        ttl = rng.choice((30, 60, 300, 3600, 86400))
        kinds = rng.sample(("A", "AAAA", "TXT", "MX"), rng.randint(1, 3))
        for kind in kinds:
            for j in range(rng.randint(1, 3)):
                value = {
                    "A": f"10.{i % 250}.{j}.{rng.randint(1, 254)}",
                    "AAAA": f"2001:db8:{i:x}::{j + 1}",
                    "TXT": f'"h{i}-{j}-{rng.randint(0, 99999)}"',
                    "MX": f"{10 * (j + 1)} mx{j}.h{i}.{ZONE}.",
                }[kind]
                lines.append(f"  local-data: '{name} {ttl} IN {kind} {value}'")
    return lines


class Authority(Unbound):
    """unbound answering diff.test from local-data (static zone: NXDOMAIN / NODATA + SOA)."""

    def __init__(self, workdir: Path, port: int, data: list[str]) -> None:
        super().__init__(workdir, port)
        self.data = data

    def command(self) -> list[str]:
        conf = self.workdir / "unbound.conf"
        conf.write_text(
            unbound_server(self.workdir, self.port)
            + '  local-zone: "." refuse\n'
            + f'  local-zone: "{ZONE}." static\n'
            + "\n".join(self.data)
            + "\nremote-control:\n  control-enable: no\n"
        )
        return [self.path(), "-d", "-c", str(conf)]

    def start(self):  # type: ignore[no-untyped-def]
        # The base class probes www.example.test; this zone answers its apex instead.
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        end = time.monotonic() + 10
        probe = dns.message.make_query(ZONE, "SOA")
        while time.monotonic() < end:
            try:
                dns.query.udp(probe, self.host, port=self.port, timeout=0.2)
                return self
            except Exception:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"unbound did not start:\n{self.log()}")


def spell(name: str, rng: random.Random) -> str:
    return "".join(c.upper() if c.isalpha() and rng.random() < 0.4 else c for c in name)


def make(name: str, rdtype: str, flags: str) -> dns.message.Message:
    kw: dict[str, Any] = {
        "plain": {"use_edns": False},
        "edns": {"use_edns": 0},
        "do": {"want_dnssec": True},
        "cd": {"use_edns": 0, "flags": dns.flags.RD | dns.flags.CD},
        "nord": {"use_edns": False, "flags": 0},
    }[flags]
    return dns.message.make_query(name, rdtype, **kw)


def question_pool(rng: random.Random) -> list[tuple[str, str, str]]:
    pool = []
    for _ in range(1200):
        roll = rng.random()
        if roll < 0.7:
            name = f"h{rng.randrange(NAMES)}.{ZONE}"
        elif roll < 0.85:
            name = f"x{rng.randrange(200)}.{ZONE}"  # NXDOMAIN
        elif roll < 0.95:
            name = f"d{rng.randrange(50)}.h{rng.randrange(NAMES)}.{ZONE}"  # NXDOMAIN, deeper
        else:
            name = ZONE
        pool.append((name, rng.choice(TYPES), rng.choice(FLAGS)))
    return pool


def canonical(msg: dns.message.Message) -> tuple[Any, ...]:
    def sets(section: list[Any]) -> frozenset[Any]:
        return frozenset(
            (rr.name.to_text().lower(), rr.rdtype, frozenset(r.to_text().lower() for r in rr))
            for rr in section
        )

    return (msg.rcode(), sets(msg.answer), sets(msg.authority))


def ttls(msg: dns.message.Message) -> dict[Any, int]:
    return {
        (rr.name.to_text().lower(), rr.rdtype): rr.ttl
        for rr in msg.answer + msg.authority + msg.additional
        if rr.rdtype != dns.rdatatype.OPT
    }


@pytest.mark.skipif(not Unbound.available(), reason="unbound is not installed")
def test_thousands_of_varied_queries_cold_and_warm_match_the_authority(
    tmp_path: Path, pldns: Any
) -> None:
    rng = random.Random(2308)
    auth = Authority(tmp_path / "unbound", free_port(), zone_data(rng)).start()
    try:
        server = pldns(
            upstreams=[auth.address],
            forward={"try_timeout": 1.0, "deadline": 3.0},
            in_process=True,
        )
        pool = question_pool(rng)
        truth: dict[tuple[str, str, str], dns.message.Message] = {}
        for name, rdtype, flags in set(pool):
            truth[(name, rdtype, flags)] = dns.query.udp(
                make(name, rdtype, flags), auth.host, port=auth.port, timeout=3.0
            )
        sequence = [rng.choice(pool) for _ in range(QUERIES)]
        kinds: dict[str, int] = {"NOERROR+data": 0, "NODATA": 0, "NXDOMAIN": 0}
        for _pass in ("cold", "warm"):
            for name, rdtype, flags in sequence:
                q = make(spell(name, rng), rdtype, flags)
                wire = q.to_wire()
                got_wire = dns.query.udp(
                    q, server.host, port=server.port, timeout=3.0, ignore_unexpected=False
                ).to_wire()
                got = dns.message.from_wire(got_wire)
                want = truth[(name, rdtype, flags)]
                where = f"{_pass} {name} {rdtype} {flags}"
                assert got.id == q.id, where
                qend = scan_query(wire).qend
                assert got_wire[12:qend] == wire[12:qend], where  # the question, byte for byte
                assert got.question == q.question, where
                assert got.question[0].name.to_text() == q.question[0].name.to_text(), where
                assert canonical(got) == canonical(want), where
                assert (got.edns >= 0) == (q.edns >= 0), where
                for rrset, ttl in ttls(got).items():
                    assert ttl <= ttls(want)[rrset], (where, rrset)
                if got.rcode() == dns.rcode.NXDOMAIN:
                    kinds["NXDOMAIN"] += 1
                    soa = [rr for rr in got.authority if rr.rdtype == dns.rdatatype.SOA]
                    assert soa and soa[0].ttl <= SOA_MINIMUM, where  # RFC 2308 §5 bound
                elif got.answer:
                    kinds["NOERROR+data"] += 1
                else:
                    kinds["NODATA"] += 1
        assert all(n > 100 for n in kinds.values()), kinds  # every kind really exercised
        stats = server.stats
        time.sleep(0.2)  # the last reply is counted just after it is sent
        cached = stats.responses[("NOERROR", "cache")] + stats.responses[("NXDOMAIN", "cache")]
        assert cached > QUERIES  # the warm pass (and repeats in the cold one) hit the cache
        assert (
            stats.responses[("NOERROR", "upstream")] + stats.responses[("NXDOMAIN", "upstream")]
            <= len(set(pool)) * 2
        )
    finally:
        auth.stop()

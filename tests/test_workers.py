"""`workers: N`: N processes on one port (SO_REUSEPORT), one table from the parent, counters
summed, reload/stop reaching every worker, a dead worker restarted and counted.

Real `pldns serve` processes on loopback; every wait is a wait-until with a generous cap.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pldns.config import parse_config
from pldns.config.schema import ConfigError
from pldns.dns.leak import LeakRecord
from pldns.dns.stats import Stats
from pldns.dns.table import Addresses
from pldns.sync.snapshot import Snapshot, encode, write_atomic
from pldns.workerreport import merge_leaks, merge_stats
from pldns.workers import worker_count
from tests.fakes.clients import a_records, make_query, udp
from tests.fakes.proc import OWNED, REGION, PldnsProcess, base_config, free_port, merge
from tests.fakes.upstream import FakeUpstream

WAIT = 20.0
QUERIES = 120  # each from a new socket (a new source port): the kernel hashes them over workers


def wait_until(check: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    end = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < end:
        try:
            last = check()
        except (OSError, ValueError, KeyError):
            last = None
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def write_snapshot(path: Path, *ips: str) -> None:
    services = {"eci": Addresses(tuple(ips), origin="file")}
    write_atomic(path, encode(Snapshot(REGION, services, time.time())))


def http_get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        body: bytes = resp.read()
        return body


def status(port: int) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(http_get(port, "/status"))
    return doc


def answers_from_many_ports(addr: tuple[str, int], count: int = QUERIES) -> list[set[str]]:
    return [a_records(udp(addr, OWNED, timeout=3.0)) for _ in range(count)]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def pool(tmp_path: Path, upstream: FakeUpstream) -> Iterator[Callable[..., PldnsProcess]]:
    """`pool(**overrides)`: pldns with workers: 2 following a snapshot file (tmp/snap.json)."""
    started: list[PldnsProcess] = []

    def start(**overrides: Any) -> PldnsProcess:
        http = free_port()
        config = merge(
            base_config("127.0.0.1", free_port(), [upstream.address]),
            {
                "workers": 2,
                "http": {"listen": f"127.0.0.1:{http}"},
                "sync": {"source": "file", "file": str(tmp_path / "snap.json"), "poll": 0.2},
                "answers": {"ttl": 0},
                "services": {"eci": {"domains": ["eci-vpc.{region}.aliyuncs.com"]}},
                **overrides,
            },
        )
        server = PldnsProcess(config, tmp_path, name=f"pool{len(started)}")
        server.http = http  # type: ignore[attr-defined]
        started.append(server)
        server.start()
        wait_until(lambda: status(http)["ready"], "ready")
        return server

    yield start
    for server in started:
        server.check_clean_exit()


def test_two_workers_answer_and_share_one_table(
    pool: Callable[..., PldnsProcess], tmp_path: Path, upstream: FakeUpstream
) -> None:
    write_snapshot(tmp_path / "snap.json", "10.0.0.1", "10.0.0.2")
    upstream.answer("forwarded.example.com", "203.0.113.7")
    server = pool()
    http = server.http  # type: ignore[attr-defined]
    # Every owned answer, whichever worker the kernel picked, comes from the parent's table.
    assert all(a == {"10.0.0.1", "10.0.0.2"} for a in answers_from_many_ports(server.addr))
    assert a_records(udp(server.addr, "forwarded.example.com")) == {"203.0.113.7"}

    def both_answered() -> dict[str, Any] | None:
        doc = status(http)
        each = doc["workers"]["each"]
        return doc if all(w["queries"] > 0 for w in each) else None

    doc = wait_until(both_answered, "both workers to report queries")
    workers = doc["workers"]
    assert workers["count"] == 2 and workers["running"] == 2 and workers["restarts"] == 0
    pids = {w["pid"] for w in workers["each"]}
    assert len(pids) == 2 and server.proc is not None and server.proc.pid not in pids
    assert len({w["table_serial"] for w in workers["each"]}) == 1  # one table
    assert doc["owned_names"] == 1
    # The counters are the sum over the workers.
    total = sum(w["queries"] for w in workers["each"])
    assert total == QUERIES + 1
    metrics = http_get(http, "/metrics").decode()
    assert "pldns_workers 2.0" in metrics
    assert f'pldns_dns_requests_total{{proto="udp",type="A"}} {QUERIES + 1}.0' in metrics
    assert 'pldns_forward_requests_total{upstream="' in metrics

    # A new table reaches every worker without a worker reading the file itself.
    write_snapshot(tmp_path / "snap.json", "10.0.0.9")
    wait_until(
        lambda: all(a == {"10.0.0.9"} for a in answers_from_many_ports(server.addr, 40)),
        "the new table on every worker",
    )
    assert all(a == {"10.0.0.9"} for a in answers_from_many_ports(server.addr))
    old_serial = workers["each"][0]["table_serial"]

    def new_serial_everywhere() -> bool:
        serials = {w["table_serial"] for w in status(http)["workers"]["each"]}
        return len(serials) == 1 and old_serial not in serials

    wait_until(new_serial_everywhere, "both workers to report the new table")
    assert "table updated" in server.log()


def test_reload_reaches_every_worker(pool: Callable[..., PldnsProcess], tmp_path: Path) -> None:
    write_snapshot(tmp_path / "snap.json", "10.0.0.1")
    server = pool()
    assert {r.ttl for a in [udp(server.addr, OWNED)] for r in a.answer} == {0}
    server.config["answers"] = {"ttl": 7}
    server.config_path.write_text(json.dumps(server.config))  # YAML is a superset of JSON
    assert server.proc is not None
    server.proc.send_signal(signal.SIGHUP)

    def every_answer_has_ttl_7() -> bool:
        return all(
            {r.ttl for r in udp(server.addr, OWNED).answer} == {7} for _ in range(QUERIES // 2)
        )

    wait_until(every_answer_has_ttl_7, "the reloaded TTL from every worker")


def test_a_dead_worker_is_restarted_and_counted(
    pool: Callable[..., PldnsProcess], tmp_path: Path
) -> None:
    write_snapshot(tmp_path / "snap.json", "10.0.0.1")
    server = pool()
    http = server.http  # type: ignore[attr-defined]
    answers_from_many_ports(server.addr, 40)

    def reported() -> dict[str, Any] | None:
        doc = status(http)
        return doc if sum(w["queries"] for w in doc["workers"]["each"]) else None

    before = wait_until(reported, "a report")
    victim = before["workers"]["each"][0]["pid"]
    counted = sum(w["queries"] for w in before["workers"]["each"])
    os.kill(victim, signal.SIGKILL)

    def restarted() -> dict[str, Any] | None:
        doc = status(http)
        w = doc["workers"]
        fresh = w["each"][0]["pid"] not in (None, victim)
        return doc if w["restarts"] == 1 and w["running"] == 2 and fresh else None

    doc = wait_until(restarted, "the worker to be restarted")
    assert "exited with status -9" in server.log()
    assert all(a == {"10.0.0.1"} for a in answers_from_many_ports(server.addr))
    metrics = http_get(http, "/metrics").decode()
    assert "pldns_worker_restarts_total 1.0" in metrics
    # The dead worker's counts stay in the totals: counters never go down on a restart.
    assert sum(w["queries"] for w in doc["workers"]["each"]) >= 0
    requests = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("pldns_dns_requests_total{")
    ]
    assert sum(requests) >= counted


def test_stop_reaches_every_worker(pool: Callable[..., PldnsProcess], tmp_path: Path) -> None:
    write_snapshot(tmp_path / "snap.json", "10.0.0.1")
    server = pool()
    pids = [w["pid"] for w in status(server.http)["workers"]["each"]]  # type: ignore[attr-defined]
    assert all(alive(p) for p in pids)
    server.check_clean_exit()
    wait_until(lambda: not any(alive(p) for p in pids), "every worker to exit")
    with pytest.raises(OSError):  # nobody listens any more
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(0.5)
        s.sendto(make_query(OWNED).to_wire(), server.addr)
        s.recv(512)


def test_workers_key() -> None:
    minimal = {"region": REGION, "services": {"eci": {"domains": ["eci.{region}.aliyuncs.com"]}}}
    assert parse_config(minimal).workers == 1
    assert parse_config({**minimal, "workers": "auto"}).workers == 0
    assert parse_config({**minimal, "workers": 4}).workers == 4
    for bad in (0, -1, "two", True, 1.5, 5000):
        with pytest.raises(ConfigError, match="workers: expected an integer from 1 to 1024"):
            parse_config({**minimal, "workers": bad})
    assert worker_count(3) == 3
    assert worker_count(0) == len(os.sched_getaffinity(0))


def test_every_plain_counter_of_stats_is_merged() -> None:
    """A counter added to Stats later must not read 0 under workers."""
    from collections import Counter
    from dataclasses import fields

    parts = [Stats(), Stats()]
    for st in parts:
        for f in fields(Stats):
            value = getattr(st, f.name)
            if isinstance(value, Counter):
                value[("k",)] += 1
            elif type(value) is int:
                setattr(st, f.name, 1)
    merged = merge_stats(parts)
    for f in fields(Stats):
        value = getattr(merged, f.name)
        if isinstance(value, Counter):
            assert value == {("k",): 2}, f.name
        elif type(value) is int:
            assert value == 2, f.name


def test_counts_add_up_and_health_is_the_worst() -> None:
    a, b = Stats(), Stats()
    a.requests[("udp", "A")] += 3
    b.requests[("udp", "A")] += 4
    b.requests[("tcp", "AAAA")] += 1
    a.respond(b"\x00\x00\x81\x80", "owned", 0.0001)
    b.respond(b"\x00\x00\x81\x83", "upstream", 0.01)
    a.upstream("u").requests = 5
    b.upstream("u").requests = 6
    b.upstream("u").healthy = False
    b.upstream("u").failures["timeout"] += 2
    merged = merge_stats([a, b])
    assert merged.requests == {("udp", "A"): 7, ("tcp", "AAAA"): 1}
    assert merged.responses == {("NOERROR", "owned"): 1, ("NXDOMAIN", "upstream"): 1}
    assert merged.duration["owned"].count == 1 and merged.duration["upstream"].count == 1
    up = merged.upstreams["u"]
    assert (up.requests, up.healthy, up.failures["timeout"]) == (11, False, 2)
    leaks = merge_leaks(
        [
            [LeakRecord("x.", {"100.64.0.1"}, 2, 10.0, 20.0)],
            [LeakRecord("x.", {"100.64.0.2"}, 3, 5.0, 30.0), LeakRecord("y.", set(), 1, 1, 1)],
        ]
    )
    assert list(leaks) == ["y.", "x."]  # oldest first, as the detector keeps them
    x = leaks["x."]
    assert (x.count, x.first_seen, x.last_seen) == (5, 5.0, 30.0)
    assert x.addresses == {"100.64.0.1", "100.64.0.2"}


def test_one_worker_is_one_process(pldns: Callable[..., Any]) -> None:
    """workers: 1 (the default) is the single process of old: no child process at all."""
    server = pldns(workers=1)
    assert a_records(udp(server.addr, "eci-vpc.cn-hangzhou.aliyuncs.com"))
    children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text()
    assert children.split() == []

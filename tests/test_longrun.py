"""Long runs on a fake clock for the loops and tables nobody else drives 10^6 times:
the leak detector's tables, the ACL cache, and Lease election (renewals, losses, errors).

(The upstream backoff, the forwarder's timers, the sync loop, the cache and capped_backoff
itself have their own long runs: test_forward_longrun.py, test_sync_memory.py,
test_cache_longrun.py, test_backoff.py; the worker pool's restarts and the config watch:
test_restart_longrun.py.)
"""

from __future__ import annotations

import logging
import random
import struct
from typing import Any

import pytest

import pldns.dns.acl
from pldns.dns.acl import Acl
from pldns.dns.leak import MAX_ADDRESSES, MAX_NAMES, LeakDetector
from pldns.dns.settings import Leaks
from pldns.dns.wire import encode_name
from pldns.sync.kube import KubeError
from pldns.sync.lease import LeaseElector
from tests.fakes.clock import Clock

STEPS = 1_000_000


# -- the leak detector -----------------------------------------------------------------------


def _reply(qname: bytes, addresses: list[bytes]) -> tuple[bytes, int]:
    """A forwarded reply (header, question, A records pointing at the question name)."""
    question = qname + b"\x00\x01\x00\x01"
    head = struct.pack("!6H", 0x1234, 0x8180, 1, len(addresses), 0, 0)
    records = b"".join(b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + ip for ip in addresses)
    return head + question + records, 12 + len(question)


# CPU-bound, ~25 s on an idle machine and 98 s beside two busy loops: pytest-timeout's 120 s
# default is no margin for a loaded machine; a real hang still ends at 600 s.
@pytest.mark.timeout(600)
def test_leak_detector_stays_bounded_over_a_million_leaking_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """10^6 leaking answers: 5,000 names (more than it remembers), each answered with ever
    new addresses inside 100.64.0.0/10, on a clock that moves 10 ms a step. The names kept,
    the addresses kept per name and the log lines per name stay bounded."""
    clock = Clock()
    interval = 300.0
    detector = LeakDetector(Leaks(interval=interval), clock=clock)
    rng = random.Random(1)
    names = [encode_name(f"api{i}.cn-hangzhou.aliyuncs.com") for i in range(5_000)]
    # Replies prebuilt (parsing them is the detector's work; building them is not).
    replies = []
    for i in range(2_000):
        ips = [struct.pack("!I", (100 << 24) | (64 << 16) | rng.randrange(1 << 22))]
        ips += [struct.pack("!I", rng.randrange(1 << 32))][: i % 2]  # sometimes one clean
        replies.append((names[i % len(names)], ips))
    caplog.set_level(logging.WARNING, logger="pldns.leak")
    hot = {f"api{step % 50}.cn-hangzhou.aliyuncs.com" for step in range(0, 200, 4)}  # 25
    logged_hot = 0
    largest = 0
    for step in range(STEPS):
        qname = names[rng.randrange(len(names))] if step % 4 else names[step % 50]
        ips = replies[step % len(replies)][1]
        reply, qend = _reply(qname, ips)
        assert detector.inspect(qname, reply, qend)
        clock.now += 0.01
        if step % 1000 == 0:
            assert len(detector.names) <= MAX_NAMES
            largest = max(largest, max(len(r.addresses) for r in detector.names.values()))
            logged_hot += sum(1 for r in caplog.records if r.args and r.args[0] in hot)
            caplog.clear()
    logged_hot += sum(1 for r in caplog.records if r.args and r.args[0] in hot)
    assert detector.total == STEPS
    assert len(detector.names) == MAX_NAMES
    # Per name: the addresses remembered are bounded, not one per answer ever seen.
    assert largest == MAX_ADDRESSES, f"a name remembers {largest} addresses"
    # A name it remembers is logged at most once per interval: the 25 hot names (asked
    # every 100 steps, never forgotten) over a run of STEPS * 10 ms. (A name forgotten and
    # seen again is logged again, as new.)
    span = STEPS * 0.01
    assert 0 < logged_hot <= len(hot) * (span / interval + 1)
    assert len(detector.snapshot()) == MAX_NAMES


# -- the ACL cache ---------------------------------------------------------------------------


def test_acl_cache_stays_bounded_over_a_million_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    """10^6 queries, 10^5 of them from distinct spoofed sources: the cache never passes its
    cap (it is cleared 20-odd times) and every answer stays right across each clear."""
    monkeypatch.setattr(pldns.dns.acl, "_CACHE_MAX", 4_096)  # the real 65,536 is slow to fill
    acl = Acl(["10.0.0.0/8"], local=["127.0.0.1"])
    peak = 0
    regulars = [f"10.0.{i >> 8}.{i & 255}" for i in range(1_000)] + ["192.168.1.1"]
    for step in range(STEPS):
        if step % 10:  # nine in ten from the clients it knows (cache hits, mostly) ...
            host = regulars[step % len(regulars)]
            n = int(host.startswith("10.")) * (10 << 24)
        else:  # ... one in ten a new address from a spray over the whole space
            n = step * 2654435761 % (1 << 32)
            host = f"{n >> 24}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"
        assert acl.allowed(host) is (n >> 24 == 10)
        if step % 997 == 0:
            peak = max(peak, len(acl.verdicts))
    assert peak <= 4_096 and len(acl.verdicts) <= 4_096
    assert acl.allowed("127.0.0.1") and acl.allowed("::ffff:10.1.2.3")


# -- Lease election ---------------------------------------------------------------------------


class FakeLeaseApi:
    """An in-memory Lease behind KubeClient.request, with failures and a resourceVersion."""

    def __init__(self) -> None:
        self.doc: dict[str, Any] | None = None
        self.rv = 0
        self.fail = False
        self.calls = 0

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        self.calls += 1
        if self.fail:
            raise KubeError(503, "ServiceUnavailable", "the API is down")
        if method == "GET":
            return (404, {}) if self.doc is None else (200, self.doc)
        if method == "POST":
            if self.doc is not None:
                return 409, {"reason": "AlreadyExists"}
            self.rv += 1
            self.doc = {**body, "metadata": {**body["metadata"], "resourceVersion": str(self.rv)}}
            return 201, self.doc
        if method == "PUT":
            assert self.doc is not None
            sent = (body.get("metadata") or {}).get("resourceVersion")
            if sent != self.doc["metadata"]["resourceVersion"]:
                return 409, {"reason": "Conflict"}
            self.rv += 1
            self.doc = {**body, "metadata": {**body["metadata"], "resourceVersion": str(self.rv)}}
            return 200, self.doc
        raise AssertionError(method)

    async def close(self) -> None:
        pass


def _run(coro: Any) -> Any:
    """Run a coroutine that never really waits (the fake API answers at once), no loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("the coroutine waited")


def test_lease_election_over_a_million_rounds_on_a_fake_clock() -> None:
    """Two replicas campaign 10^6 times on a fake clock, through API outages, conflicts and
    a leader that goes quiet: never two holders at once by the record, and nothing each
    replica keeps (observed record, last error) grows."""
    api = FakeLeaseApi()
    clock, wall = Clock(), Clock(1.7e9)
    electors = [
        LeaseElector(api, "ns", "lease", name, lease_duration=15, renew_every=5, clock=clock,
                     wall=wall)  # type: ignore[arg-type]
        for name in ("a", "b")
    ]  # fmt: skip
    rng = random.Random(7)
    holders: dict[str, float] = {}  # who last got True, at what fake time
    taken_over = 0
    for step in range(STEPS):
        clock.now += rng.choice((0.5, 1.0, 5.0, 5.0, 16.0))
        wall.now = clock.now + 1.7e9
        api.fail = step % 1000 < 30  # 3 % of the time the API is down, in bursts
        e = electors[rng.randrange(2) if step % 5000 < 4000 else 1]  # b sometimes alone
        try:
            got = _run(e.try_acquire_or_renew())
        except KubeError:
            continue
        if got:
            other = "b" if e.identity == "a" else "a"
            if other in holders:
                # The other held it: only past its lease by our clock (it went quiet).
                assert clock.now - holders[other] >= 15, (step, holders)
                taken_over += 1
                del holders[other]
            holders[e.identity] = clock.now
            assert api.doc is not None and api.doc["spec"]["holderIdentity"] == e.identity
    assert taken_over > 100  # the run did exercise take-overs
    for e in electors:
        assert e._observed is None or len(e._observed) == 5
        assert len(e._last_error) < 200
    spec = api.doc["spec"] if api.doc else {}
    assert spec["leaseTransitions"] == taken_over  # counted as client-go counts them

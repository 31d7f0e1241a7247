"""A 1,000-node fleet in one test (issue #10): two `pldns sync` replicas (Lease leader election)
against the OpenAPI emulator, publishing to the Kubernetes API emulator; a kubelet stand-in
that copies the ConfigMap into 1,000 node directories, each after its own random delay, with
the kubelet's `..data` symlink swap; 1,000 node resolvers (the real Syncer + FileSource, as
`pldns serve` with `sync.source: file` runs them) in this process, following those files.

Time is scaled: sync.interval 1 s (the smallest allowed), heartbeat 5 intervals, node poll
0.5 s, kubelet delay uniform in [0, 2] s (a real kubelet: up to its sync period plus the
ConfigMap cache TTL, about 60-90 s). What it shows, and asserts:

- cloud API calls per interval are those of one node (one ListVpcEndpoints page and one
  ListVpcEndpointZones per matched endpoint), however many nodes; the standby makes none;
- how long a change takes to reach 99% and 100% of the nodes;
- through a leader change (SIGTERM to the leader: it releases the Lease, the standby takes
  over) and a 10-interval API outage, no node ever installs a table in which an owned name
  has no address (which would mean the public answer, or SERVFAIL), and the node's snapshot
  age shows the outage and recovers;
- the ConfigMap at 1,000 endpoints stays far under the 1 MiB object limit
  (test_configmap_size_at_1000_endpoints).

The figures are printed (pytest -s) and, with PLDNS_FLEET_REPORT=path, written as JSON; they
are quoted in deploy/README.md ("A thousand nodes").
"""

from __future__ import annotations

import asyncio
import heapq
import json
import os
import random
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from pldns.config import Config, parse_config
from pldns.dns.table import Addresses, RecordTable
from pldns.sync.kube import MAX_CONFIGMAP_DATA, ConfigMapSink, KubeClient, KubeConfig
from pldns.sync.loop import Syncer
from pldns.sync.snapshot import Snapshot, encode
from pldns.sync.source import FileSource
from tests.emulator import OpenApiEmulator
from tests.emulator.kubeapi import KubeApiEmulator
from tests.test_sync_e2e import ECI, REGION, VPC, Proc, pldns_env

NODES = 1000
INTERVAL = 1.0
HEARTBEAT = 5
POLL = 0.5
KUBELET_MAX_DELAY = 2.0
OUTAGE_INTERVALS = 10
BUDGET = 90.0  # seconds for the whole fleet test
NAMESPACE = "pldns-system"
CONFIGMAP = "pldns-snapshot"
LEASE = "pldns-syncer"
TOKEN = "sim-token"
OWNED = ("eci", "vpc")


def node_config() -> Config:
    return parse_config(
        {
            "region": REGION,
            "listen": ["127.0.0.1:5353"],
            "upstreams": ["127.0.0.1:53"],
            "answers": {"ttl": 1, "when_unknown": "forward"},
            "services": {
                "eci": {"domains": ["eci-vpc.{region}.aliyuncs.com"]},
                "vpc": {"domains": ["vpc-vpc.{region}.aliyuncs.com"]},
            },
            "sync": {"source": "file", "file": "/unused", "poll": POLL},
        }
    )


def syncer_config(emu: OpenApiEmulator) -> dict[str, Any]:
    return {
        "region": REGION,
        "listen": ["127.0.0.1:5353"],
        "upstreams": ["127.0.0.1:53"],
        "answers": {"ttl": 1},
        "services": {
            "eci": {"domains": ["eci-vpc.{region}.aliyuncs.com"]},
            "vpc": {"domains": ["vpc-vpc.{region}.aliyuncs.com"]},
        },
        "sync": {
            "source": "privatelink",
            "interval": INTERVAL,
            "jitter": 0,
            "heartbeat": HEARTBEAT,
        },
        "privatelink": {
            "vpc_id": "vpc-test",
            "endpoint": emu.endpoint,
            "protocol": "http",
            "page_size": 50,
            "connect_timeout": 0.5,
            "read_timeout": 1,
        },
        "http": {"listen": "off"},
        "log": {"format": "json"},
    }


# -- the kubelet stand-in ----------------------------------------------------------------------


def swap_in(directory: Path, generation: int, data: bytes) -> None:
    """What the kubelet's atomic writer does: a new timestamped dir, `..data` re-pointed."""
    target = directory / f"..gen{generation}"
    target.mkdir()
    (target / "snapshot.json").write_bytes(data)
    tmp = directory / "..data_tmp"
    os.symlink(target.name, tmp)
    os.replace(tmp, directory / "..data")
    link = directory / "snapshot.json"
    if not link.is_symlink():
        os.symlink("..data/snapshot.json", link)
    for old in directory.glob("..gen*"):
        if old.name != target.name:
            shutil.rmtree(old, ignore_errors=True)


class Kubelet(threading.Thread):
    """Watches the ConfigMap; delivers each new version to every node after its own delay."""

    def __init__(self, api: KubeApiEmulator, dirs: list[Path], seed: int = 10) -> None:
        super().__init__(name="kubelet", daemon=True)
        self.api = api
        self.dirs = dirs
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.delivered = [0] * len(dirs)  # generation each node has
        self.generation = 0
        self.versions: list[tuple[float, int]] = []  # (monotonic time seen, bytes)
        self.paused = threading.Event()

    def run(self) -> None:
        seen_rv = ""
        due: list[tuple[float, int, int, bytes]] = []
        while not self.stop.is_set():
            cm = self.api.configmap(NAMESPACE, CONFIGMAP)
            if cm is not None and cm["metadata"]["resourceVersion"] != seen_rv:
                seen_rv = cm["metadata"]["resourceVersion"]
                data = cm["data"]["snapshot.json"].encode()
                self.generation += 1
                now = time.monotonic()
                self.versions.append((now, len(data)))
                for i in range(len(self.dirs)):
                    delay = self.rng.uniform(0, KUBELET_MAX_DELAY)
                    heapq.heappush(due, (now + delay, i, self.generation, data))
            now = time.monotonic()
            while due and due[0][0] <= now:
                _, i, generation, data = heapq.heappop(due)
                if generation > self.delivered[i]:
                    swap_in(self.dirs[i], generation, data)
                    self.delivered[i] = generation
            self.stop.wait(0.02)


# -- the nodes ----------------------------------------------------------------------------------


class Node:
    """One node resolver: the Syncer and FileSource `pldns serve` uses, recording its tables."""

    def __init__(self, path: Path, config: Config) -> None:
        self.table = RecordTable()
        self.bad: list[str] = []
        self.syncer = Syncer(config, FileSource(str(path), REGION), self.install)
        self.syncer.start_static()

    def install(self, table: RecordTable) -> None:
        if table.loaded:
            missing = [s for s in OWNED if not table.services.get(s, Addresses()).known]
            if missing:  # an owned name without address: the public answer (when_unknown)
                self.bad.append(f"{missing} at {time.monotonic():.2f}")
        self.table = table

    def ips(self, service: str) -> frozenset[str]:
        addrs = self.table.services.get(service)
        return frozenset(addrs.v4) if addrs else frozenset()


class Fleet:
    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = nodes
        self.stop = asyncio.Event()
        self.sweeps = 0
        self.max_age = 0.0

    async def run(self) -> None:
        while not self.stop.is_set():
            for node in self.nodes:
                await node.syncer.round()
            self.sweeps += 1
            now = time.time()
            for node in self.nodes:
                if node.syncer.state.data_time:
                    self.max_age = max(self.max_age, now - node.syncer.state.data_time)
            await asyncio.sleep(POLL)

    async def reach(
        self, service: str, want: set[str], since: float, timeout: float
    ) -> list[float]:
        """Seconds from `since` until each node serves exactly `want` for `service`."""
        got: dict[int, float] = {}
        end = time.monotonic() + timeout
        while len(got) < len(self.nodes) and time.monotonic() < end:
            for i, node in enumerate(self.nodes):
                if i not in got and node.ips(service) == want:
                    got[i] = time.monotonic() - since
            await asyncio.sleep(0.05)
        assert len(got) == len(self.nodes), f"{len(got)} of {len(self.nodes)} nodes got {want}"
        return sorted(got.values())


def pct(values: list[float], q: float) -> float:
    return round(values[min(len(values) - 1, int(q * len(values)))], 2)


async def wait_for(check: Any, timeout: float, what: str) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def holder(api: KubeApiEmulator) -> str:
    lease = api.lease(NAMESPACE, LEASE)
    return (lease or {}).get("spec", {}).get("holderIdentity") or ""


def cloud_calls(emu: OpenApiEmulator) -> tuple[int, int]:
    return emu.count("ListVpcEndpoints"), emu.count("ListVpcEndpointZones")


def test_a_thousand_nodes_follow_one_syncer(tmp_path: Path) -> None:
    started = time.monotonic()
    report: dict[str, Any] = {"nodes": NODES, "interval_s": INTERVAL, "heartbeat": HEARTBEAT,
                              "kubelet_max_delay_s": KUBELET_MAX_DELAY, "poll_s": POLL}  # fmt: skip
    emu = OpenApiEmulator(region=REGION).start()
    emu.add_endpoint("ep-eci", ECI, zones=[{"zone_id": f"{REGION}-h", "eni_ip": "10.0.0.1"},
                                           {"zone_id": f"{REGION}-k", "eni_ip": "10.0.0.2"}])  # fmt: skip
    emu.add_endpoint("ep-vpc", VPC, zones=[{"zone_id": f"{REGION}-h", "eni_ip": "10.0.1.1"}])
    api = KubeApiEmulator(tokens={TOKEN: "system:serviceaccount:pldns-system:pldns-syncer"})
    api.start()
    home = tmp_path / "home"
    home.mkdir()
    token = tmp_path / "token"
    token.write_text(TOKEN)
    cfg = tmp_path / "syncer.yaml"
    cfg.write_text(yaml.safe_dump(syncer_config(emu)))
    args = ["sync", "--config", str(cfg), "--configmap", f"{NAMESPACE}/{CONFIGMAP}",
            "--lease", f"{NAMESPACE}/{LEASE}", "--kube-api", api.url,
            "--kube-token-file", str(token)]  # fmt: skip
    syncers = {
        name: Proc(tmp_path, name, args, {**pldns_env(home), "POD_NAME": name})
        for name in ("syncer-a", "syncer-b")
    }
    dirs = [tmp_path / "nodes" / f"{i:04d}" for i in range(NODES)]
    for d in dirs:
        d.mkdir(parents=True)
    kubelet = Kubelet(api, dirs)
    try:
        syncers["syncer-a"].spawn()
        first = asyncio.run(_first_publish(api, syncers["syncer-a"]))
        syncers["syncer-b"].spawn()
        kubelet.start()
        asyncio.run(_fleet(emu, api, kubelet, syncers, dirs, report))
        report["first_publish_s"] = round(first, 2)
    finally:
        kubelet.stop.set()
        for proc in syncers.values():
            proc.stop()
        emu.stop()
        api.stop()
    for proc in syncers.values():
        assert "Traceback" not in proc.log(), proc.log()
    report["total_s"] = round(time.monotonic() - started, 1)
    print("\nfleet simulation:", json.dumps(report, indent=2))
    if os.environ.get("PLDNS_FLEET_REPORT"):
        Path(os.environ["PLDNS_FLEET_REPORT"]).write_text(json.dumps(report, indent=2) + "\n")
    assert report["total_s"] < BUDGET, report


async def _first_publish(api: KubeApiEmulator, proc: Proc) -> float:
    t0 = time.monotonic()
    await wait_for(lambda: api.configmap(NAMESPACE, CONFIGMAP) or not proc.running(), 20,
                   "the first snapshot in the ConfigMap")  # fmt: skip
    assert proc.running(), proc.log()
    return time.monotonic() - t0


async def _fleet(
    emu: OpenApiEmulator,
    api: KubeApiEmulator,
    kubelet: Kubelet,
    syncers: dict[str, Proc],
    dirs: list[Path],
    report: dict[str, Any],
) -> None:
    # Nodes start once the kubelet has mounted their ConfigMap (it does, before a container
    # starts), and load it before they answer (App.start's first file round).
    await wait_for(lambda: min(kubelet.delivered) >= 1, 10, "every node's first mount")
    config = node_config()
    nodes = [Node(d / "snapshot.json", config) for d in dirs]
    for node in nodes:
        assert await node.syncer.round() and node.table.loaded
    fleet = Fleet(nodes)
    driver = asyncio.ensure_future(fleet.run())
    try:
        await _phases(emu, api, kubelet, syncers, fleet, report)
    finally:
        fleet.stop.set()
        await driver
    bad = [(i, n.bad) for i, n in enumerate(nodes) if n.bad]
    report["nodes_that_served_an_empty_owned_name"] = len(bad)
    assert not bad, bad[:5]


async def _phases(
    emu: OpenApiEmulator,
    api: KubeApiEmulator,
    kubelet: Kubelet,
    syncers: dict[str, Proc],
    fleet: Fleet,
    report: dict[str, Any],
) -> None:
    # 1. Steady state: cloud calls per interval, and one change reaching the fleet.
    emu.reset_calls()
    kube_before = len(api.calls)
    t0 = time.monotonic()
    emu.set_zone("ep-eci", f"{REGION}-h", eni_ip="10.0.0.11")
    times = await fleet.reach("eci", {"10.0.0.11", "10.0.0.2"}, t0, 15)
    report["change_to_50pct_s"] = pct(times, 0.5)
    report["change_to_99pct_s"], report["change_to_100pct_s"] = pct(times, 0.99), pct(times, 1)
    await asyncio.sleep(max(0.0, 10 * INTERVAL - (time.monotonic() - t0)))
    elapsed = time.monotonic() - t0
    pages, zones = cloud_calls(emu)
    report["cloud_calls_per_round"] = round((pages + zones) / pages, 2)
    report["cloud_calls_per_interval"] = round((pages + zones) * INTERVAL / elapsed, 2)
    report["kube_calls_per_interval"] = round(
        (len(api.calls) - kube_before) * INTERVAL / elapsed, 2
    )
    assert (pages + zones) / pages == 3  # 1 page of endpoints + 2 matched endpoints' zones
    assert pages <= elapsed / INTERVAL + 1  # one round per interval, from one replica
    report["configmap_versions_in_10_intervals"] = sum(1 for t, _ in kubelet.versions if t >= t0)

    # 2. Leader change: the leader stops (rolling update), the standby takes the Lease.
    leader = holder(api)
    assert leader in syncers, leader
    standby = next(n for n in syncers if n != leader)
    t1 = time.monotonic()
    old = syncers[leader]
    assert old.proc is not None
    old.proc.send_signal(signal.SIGTERM)
    await wait_for(lambda: not old.running(), 10, "the old leader to exit")
    assert old.proc.returncode == 0, old.log()
    # The new leader's first ListVpcEndpointZones fails (the failure that once published an
    # empty service to every node): it must keep what is published.
    emu.inject("5xx", count=1, action="ListVpcEndpointZones", code="InternalError")
    await wait_for(lambda: holder(api) == standby, 20, "the standby to take the Lease")
    report["leader_change_s"] = round(time.monotonic() - t1, 2)
    versions = len(kubelet.versions)
    await wait_for(lambda: len(kubelet.versions) > versions, 15, "the new leader to publish")
    report["leader_change_to_first_publish_s"] = round(time.monotonic() - t1, 2)
    report["new_leader_first_round_partial"] = "skipped this round" in syncers[standby].err()
    assert report["new_leader_first_round_partial"], syncers[standby].log()
    t2 = time.monotonic()
    emu.set_zone("ep-vpc", f"{REGION}-h", eni_ip="10.0.1.12")
    times = await fleet.reach("vpc", {"10.0.1.12"}, t2, 15)
    report["after_leader_change_change_to_100pct_s"] = pct(times, 1)

    # 3. A 10-interval API outage: nodes keep serving; their data age grows, then recovers.
    fleet.max_age = 0.0
    emu.stop()
    await asyncio.sleep(OUTAGE_INTERVALS * INTERVAL)
    report["outage_intervals"] = OUTAGE_INTERVALS
    emu.start()
    t3 = time.monotonic()
    emu.set_zone("ep-eci", f"{REGION}-k", eni_ip="10.0.0.22")
    times = await fleet.reach("eci", {"10.0.0.11", "10.0.0.22"}, t3, 15)
    report["after_outage_change_to_100pct_s"] = pct(times, 1)
    report["max_node_snapshot_age_during_outage_s"] = round(fleet.max_age, 1)
    assert fleet.max_age >= OUTAGE_INTERVALS * INTERVAL  # the outage shows as age
    ages = [time.time() - (n.syncer.state.data_time or 0) for n in fleet.nodes]
    report["max_node_snapshot_age_after_recovery_s"] = round(max(ages), 1)
    assert max(ages) < HEARTBEAT * INTERVAL + KUBELET_MAX_DELAY + 2 * POLL + 3
    report["configmap_bytes"] = kubelet.versions[-1][1]


def test_configmap_size_at_1000_endpoints() -> None:
    """1,000 endpoints with two zones each (IDs as long as real ones), published into the
    Kubernetes API emulator's ConfigMap: the stored object, measured."""
    rng = random.Random(1000)

    def rid(prefix: str) -> str:
        return prefix + "".join(
            rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(20)
        )

    services: dict[str, Addresses] = {}
    for s in range(100):  # 100 services of 10 endpoints
        v4: list[str] = []
        detail: list[dict[str, str]] = []
        for e in range(10):
            endpoint = rid("ep-bp1")
            for z, zone in enumerate(("cn-hangzhou-h", "cn-hangzhou-k")):
                ip = f"10.{s}.{e}.{z + 1}"
                v4.append(ip)
                detail.append({"ip": ip, "zone": zone, "endpoint": endpoint, "eni": rid("eni-bp1"),
                               "status": "Connected"})  # fmt: skip
        services[f"service-{s:03d}"] = Addresses(tuple(v4), (), "privatelink", tuple(detail))
    data = encode(Snapshot(REGION, services, time.time()))

    async def publish(url: str) -> None:
        client = KubeClient(KubeConfig(api=url, token=TOKEN), use_aiohttp=False)
        try:
            await ConfigMapSink(client, NAMESPACE, CONFIGMAP).publish(data)
        finally:
            await client.close()

    with KubeApiEmulator(tokens={TOKEN: "syncer"}) as api:
        asyncio.run(publish(api.url))
        stored = api.configmap(NAMESPACE, CONFIGMAP)
    assert stored is not None
    size = len(json.dumps(stored).encode())
    print(f"\nConfigMap at 1,000 endpoints (2,000 addresses): {size} bytes "
          f"({size / 1048576:.0%} of 1 MiB)")  # fmt: skip
    assert size < 1048576 / 3 and size < MAX_CONFIGMAP_DATA

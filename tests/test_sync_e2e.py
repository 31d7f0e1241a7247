"""End to end: `pldns sync`, `pldns serve` and `pldns discover` as subprocesses against the
OpenAPI emulator, queried with dnspython over loopback UDP.

Every process's stdout/stderr goes to files under the test's tmp_path; at teardown every
process is stopped (SIGTERM, bounded wait, SIGKILL) and every file under tmp_path (logs,
configs, snapshots) is checked for the test AccessKey secret: it must never appear.

Timing: `sync.interval` cannot go below 1 s (config), so the interval here is 1 s and every
wait has a generous margin over what the behaviour needs.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
import yaml

from pldns.dns.table import Addresses
from pldns.sync.snapshot import Snapshot, encode, read
from tests.emulator import TEST_ACCESS_KEY_ID, TEST_ACCESS_KEY_SECRET, OpenApiEmulator
from tests.emulator.sdk import PROXY_ENV_VARS
from tests.fakes.proc import free_port

REPO = Path(__file__).resolve().parents[1]
REGION = "cn-hangzhou"
ECI = f"com.aliyuncs.privatelink.{REGION}.eci"
VPC = f"com.aliyuncs.privatelink.{REGION}.vpc"
ECS = f"com.aliyuncs.privatelink.{REGION}.ecs-internal"
ECI_NAME = f"eci-vpc.{REGION}.aliyuncs.com"
VPC_NAME = f"vpc-vpc.{REGION}.aliyuncs.com"
ECS_NAME = f"ecs-vpc.{REGION}.aliyuncs.com"
INTERVAL = 1.0  # the smallest sync.interval the config accepts
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
WRONG_SECRET = "wrong-secret-Xk29vQ"
# How long to wait for something that takes a second or two on an idle machine: generous,
# because the machine running the suite may be busy (a slow run must not fail; a stuck one
# still does).
LOADED_CAP = 20.0

# ---------------------------------------------------------------------------------------
# Shared helpers: processes, configs, DNS queries
# ---------------------------------------------------------------------------------------


def pldns_env(home: Path, credentials: bool = True, secret: str = TEST_ACCESS_KEY_SECRET) -> dict:
    """The environment of a pldns process: no proxies, no metadata service, no stray
    Alibaba Cloud settings; the test AccessKey only when `credentials`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in PROXY_ENV_VARS
        and k.upper() not in ("NO_PROXY", "DEBUG")
        and not k.startswith(("ALIBABA_CLOUD_", "ALICLOUD_"))
    }
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["HOME"] = str(home)  # no ~/.aliyun or ~/.alibabacloud of the machine's user
    env["ALIBABA_CLOUD_ECS_METADATA_DISABLED"] = "true"  # never 100.100.100.200
    if credentials:
        env["ALIBABA_CLOUD_ACCESS_KEY_ID"] = TEST_ACCESS_KEY_ID
        env["ALIBABA_CLOUD_ACCESS_KEY_SECRET"] = secret
    return env


class Proc:
    """One `python -m pldns ...` with stdout and stderr in files."""

    def __init__(self, workdir: Path, name: str, args: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.out_path = workdir / f"{name}.out"
        self.err_path = workdir / f"{name}.err"
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> Proc:
        with open(self.out_path, "ab") as out, open(self.err_path, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pldns", *self.args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=REPO,
                env=self.env,
            )
        return self

    def out(self) -> str:
        return self.out_path.read_text(errors="replace") if self.out_path.exists() else ""

    def err(self) -> str:
        return self.err_path.read_text(errors="replace") if self.err_path.exists() else ""

    def log(self) -> str:
        return f"--- {self.name} stdout\n{self.out()}--- {self.name} stderr\n{self.err()}"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_for(self, text: str, timeout: float = START_TIMEOUT) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if text in self.err() or text in self.out():
                return
            if not self.running():
                raise AssertionError(f"{self.name} exited before {text!r}:\n{self.log()}")
            time.sleep(0.02)
        raise AssertionError(f"{self.name}: no {text!r} within {timeout}s:\n{self.log()}")

    def wait_exit(self, timeout: float = START_TIMEOUT) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"{self.name} kept running:\n{self.log()}") from None

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """terminate (or `sig`) -> wait -> kill. The exit status, None if never started."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        return proc.returncode


class Pldns:
    """Starts pldns processes for one test and cleans up after them (the `run` fixture)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.home = tmp / "home"
        self.home.mkdir()
        self.procs: list[Proc] = []
        self.secrets = [TEST_ACCESS_KEY_SECRET, WRONG_SECRET]

    def spawn(
        self,
        name: str,
        args: list[str],
        credentials: bool = True,
        secret: str = TEST_ACCESS_KEY_SECRET,
        **env: str,
    ) -> Proc:
        proc = Proc(self.tmp, name, args, {**pldns_env(self.home, credentials, secret), **env})
        self.procs.append(proc)
        return proc.spawn()

    def write_config(self, name: str, config: dict[str, Any]) -> Path:
        path = self.tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def serve(
        self, name: str, config: dict[str, Any], credentials: bool = True, **env: str
    ) -> Proc:
        path = self.write_config(name, config)
        proc = self.spawn(name, ["serve", "--config", str(path)], credentials, **env)
        proc.wait_for("serving on")
        return proc

    def cli(self, name: str, args: list[str], **env: Any) -> tuple[int, str, str]:
        proc = self.spawn(name, args, **env)
        rc = proc.wait_exit()
        return rc, proc.out(), proc.err()

    def close(self) -> None:
        for proc in self.procs:
            proc.stop()

    def check_no_secrets(self) -> None:
        """Logs, configs, snapshots: nothing under tmp_path holds an AccessKey secret."""
        leaks = []
        for path in sorted(self.tmp.rglob("*")):
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                leaks += [f"{path.name}: {s!r}" for s in self.secrets if s.encode() in data]
        assert not leaks, f"secret written out: {leaks}"

    def check_no_tracebacks(self) -> None:
        for proc in self.procs:
            assert "Traceback" not in proc.log(), proc.log()


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Pldns]:
    runner = Pldns(tmp_path)
    try:
        yield runner
    finally:
        runner.close()
    runner.check_no_secrets()
    runner.check_no_tracebacks()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_ENV_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def emu() -> Iterator[OpenApiEmulator]:
    emulator = OpenApiEmulator(region=REGION).start()
    try:
        fleet(emulator)
        yield emulator
    finally:
        emulator.stop()


def fleet(emu: OpenApiEmulator) -> None:
    """Five endpoints in vpc-test (three pages at page_size 2), one elsewhere."""
    emu.add_endpoint(
        "ep-eci",
        ECI,
        zones=[
            {"zone_id": f"{REGION}-h", "eni_ip": "10.0.0.1"},
            {"zone_id": f"{REGION}-k", "eni_ip": "10.0.0.2", "ipv6": "fd00::2"},
            {"zone_id": f"{REGION}-j", "eni_ip": "10.0.0.3", "status": "Disconnected"},
        ],
    )
    emu.add_endpoint("ep-vpc", VPC, zones=[{"zone_id": f"{REGION}-h", "eni_ip": "10.0.1.1"}])
    emu.add_endpoint(
        "ep-eci-pending", ECI, status="Pending", zones=[{"zone_id": "z", "eni_ip": "10.0.9.1"}]
    )
    emu.add_endpoint(
        "ep-unrelated", f"com.aliyuncs.privatelink.{REGION}.oss", zones=[{"zone_id": "z"}]
    )
    emu.add_endpoint(
        "ep-tagged-other", ECS, tags={"team": "x"}, zones=[{"zone_id": "z", "eni_ip": "10.0.9.2"}]
    )
    emu.add_endpoint(
        "ep-eci-elsewhere", ECI, vpc_id="vpc-other", zones=[{"zone_id": "z", "eni_ip": "10.0.9.3"}]
    )


ECI_IPS = {"10.0.0.1", "10.0.0.2"}


def privatelink(emu: OpenApiEmulator) -> dict[str, Any]:
    return {
        "vpc_id": "vpc-test",
        "endpoint": emu.endpoint,
        "pvtz_endpoint": emu.endpoint,
        "protocol": "http",
        "page_size": 2,
        "connect_timeout": 1,
        "read_timeout": 2,
    }


def config(emu: OpenApiEmulator | None, **sections: Any) -> dict[str, Any]:
    """A serve/sync config: eci and vpc by default service name, ecs by endpoint name,
    SERVFAIL for names without addresses, interval 1 s, quick shutdown, ports free."""
    base: dict[str, Any] = {
        "region": REGION,
        "listen": [f"127.0.0.1:{free_port()}"],
        "upstreams": [f"127.0.0.1:{free_port()}"],  # nothing there: owned names only
        "answers": {"ttl": 1, "when_unknown": "servfail"},
        "services": {
            "eci": {"domains": ["eci-vpc.{region}.aliyuncs.com", "eci.{region}.aliyuncs.com"]},
            "vpc": {"domains": ["vpc-vpc.{region}.aliyuncs.com"]},
            "ecs": {
                "domains": ["ecs-vpc.{region}.aliyuncs.com"],
                "privatelink": {"endpoint_name": "ecs-endpoint"},
            },
        },
        "sync": {"source": "privatelink", "interval": INTERVAL, "jitter": 0},
        "http": {"listen": f"127.0.0.1:{free_port()}"},
        "lifecycle": {"lame_duck": 0, "drain": 0.5, "reload_poll": 0},
    }
    if emu is not None:
        base["privatelink"] = privatelink(emu)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key != "services":
            base[key] = {**base[key], **value}
        elif value is None:
            base.pop(key, None)
        else:
            base[key] = value
    return base


def dns_addr(cfg: dict[str, Any]) -> tuple[str, int]:
    host, _, port = cfg["listen"][0].rpartition(":")
    return host, int(port)


def status(cfg: dict[str, Any]) -> dict[str, Any]:
    url = f"http://{cfg['http']['listen']}/status"
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=2) as r:
        return json.loads(r.read())


Answer = tuple[str, frozenset[str]]


def ask(addr: tuple[str, int], name: str, rdtype: str = "A", timeout: float = 1.0) -> Answer:
    """(rcode, addresses) of one UDP query; ("TIMEOUT", {}) when nothing comes back."""
    query = dns.message.make_query(name, rdtype)
    try:
        reply = dns.query.udp(query, addr[0], port=addr[1], timeout=timeout)
    except dns.exception.Timeout:
        return "TIMEOUT", frozenset()
    want = dns.rdatatype.from_text(rdtype)
    ips = frozenset(rd.to_text() for rrset in reply.answer if rrset.rdtype == want for rd in rrset)
    return dns.rcode.to_text(reply.rcode()), ips


def ok(*ips: str) -> Answer:
    return "NOERROR", frozenset(ips)


SERVFAIL: Answer = ("SERVFAIL", frozenset())


def wait_answer(
    addr: tuple[str, int],
    name: str,
    want: Answer,
    timeout: float = 4 * INTERVAL + 2,
    rdtype: str = "A",
    proc: Proc | None = None,
) -> float:
    """Poll until `name` answers `want`; seconds it took."""
    start = time.monotonic()
    got: Answer = ("NONE", frozenset())
    while time.monotonic() - start < timeout:
        got = ask(addr, name, rdtype)
        if got == want:
            return time.monotonic() - start
        time.sleep(0.05)
    logs = proc.log() if proc else ""
    raise AssertionError(f"{name} {rdtype}: wanted {want}, still {got} after {timeout}s\n{logs}")


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# ---------------------------------------------------------------------------------------
# (a) pldns sync --once
# ---------------------------------------------------------------------------------------


def test_sync_once_prints_the_table_and_fails_clearly_when_the_api_is_down(
    run: Pldns, emu: OpenApiEmulator, tmp_path: Path
) -> None:
    path = run.write_config("sync", config(emu))
    snap = tmp_path / "once.json"
    rc, out, err = run.cli("once", ["sync", "--once", "--config", str(path), "--out", str(snap)])
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["SERVICE", "DOMAINS", "ENDPOINT", "ZONE", "IP", "STATUS"]
    rows = [line.split() for line in lines[1:]]
    domains = [ECI_NAME, f"eci.{REGION}.aliyuncs.com"]
    assert ["eci", *domains, "ep-eci", f"{REGION}-h", "10.0.0.1", "Connected"] in rows
    assert ["eci", *domains, "ep-eci", f"{REGION}-k", "10.0.0.2", "fd00::2", "Connected"] in rows
    assert ["eci", *domains, "ep-eci", f"{REGION}-j", "10.0.0.3", "Disconnected"] in rows
    assert ["vpc", VPC_NAME, "ep-vpc", f"{REGION}-h", "10.0.1.1", "Connected"] in rows
    assert any(r[:4] == ["eci", *domains, "ep-eci-pending"] for r in rows)
    assert "Pending/Connected: not used" in out
    assert "no endpoint matches endpoint_name=ecs-endpoint" in out
    assert "ep-eci-elsewhere" not in out and "ep-unrelated" not in out
    assert read(snap).services["eci"].v4 == ("10.0.0.1", "10.0.0.2")  # --out written

    # One endpoint's zones fail: still exit 0, the failure is shown.
    emu.inject("5xx", count=1, action="ListVpcEndpointZones", code="InternalError")
    rc, out, err = run.cli("partial", ["sync", "--once", "--config", str(path)])
    assert rc == 0, err
    assert "zones failed: server: InternalError (HTTP 500)" in out
    assert "some endpoints failed" in out

    emu.stop()
    rc, out, err = run.cli("down", ["sync", "--once", "--config", str(path)])
    assert rc != 0
    assert "sync failed: network: " in err and f"Cannot connect to host {emu.endpoint}" in err
    assert out == ""


# ---------------------------------------------------------------------------------------
# (b) serve follows the API without a restart
# ---------------------------------------------------------------------------------------


def test_serve_follows_changes_removals_and_new_endpoints(run: Pldns, emu: OpenApiEmulator) -> None:
    cfg = config(emu, sync={"keep_rounds": 2})
    addr = dns_addr(cfg)
    proc = run.serve("serve", cfg)
    pid = proc.proc.pid  # type: ignore[union-attr]
    wait_answer(addr, ECI_NAME, ok(*ECI_IPS), proc=proc)
    assert ask(addr, f"ECI.{REGION}.aliyuncs.com") == ok(*ECI_IPS)  # every owned name, any case
    assert ask(addr, ECI_NAME, "AAAA") == ok("fd00::2")
    assert ask(addr, VPC_NAME) == ok("10.0.1.1")
    assert ask(addr, ECS_NAME) == SERVFAIL  # no endpoint matches yet: when_unknown

    emu.set_zone("ep-eci", f"{REGION}-h", eni_ip="10.0.0.9")
    # Picked up by a later round (one a second). The cap is for a loaded machine, not the
    # behaviour: what would fail it is a loop that stopped polling, not a slow one.
    wait_answer(addr, ECI_NAME, ok("10.0.0.9", "10.0.0.2"), proc=proc, timeout=LOADED_CAP)

    emu.remove_endpoint("ep-vpc")
    # Kept for sync.keep_rounds good rounds (the endpoint may be Updating), then dropped.
    wait_until(lambda: status(cfg)["sync"]["held"].get("vpc"), LOADED_CAP, "vpc held")
    assert ask(addr, VPC_NAME, timeout=5) == ok("10.0.1.1")
    wait_answer(addr, VPC_NAME, SERVFAIL, proc=proc, timeout=LOADED_CAP)
    assert "keeping its 1 previous addresses (round 2 of 2" in proc.log()

    emu.add_endpoint(
        "ep-ecs",
        ECS,
        name="ecs-endpoint",
        zones=[{"zone_id": f"{REGION}-h", "eni_ip": "10.0.2.1", "ipv6": "fd00::21"}],
    )
    wait_answer(addr, ECS_NAME, ok("10.0.2.1"), proc=proc)
    assert ask(addr, ECS_NAME, "AAAA") == ok("fd00::21")
    assert ask(addr, ECI_NAME) == ok("10.0.0.9", "10.0.0.2")
    assert proc.running() and proc.proc.pid == pid  # type: ignore[union-attr]
    assert proc.stop() == 0


# ---------------------------------------------------------------------------------------
# (c) an API outage: the last good table keeps answering
# ---------------------------------------------------------------------------------------


def test_outage_keeps_answering_and_recovers(run: Pldns, emu: OpenApiEmulator) -> None:
    cfg = config(emu)
    addr = dns_addr(cfg)
    proc = run.serve("serve", cfg)
    wait_answer(addr, ECI_NAME, ok(*ECI_IPS), proc=proc)
    wait_answer(addr, VPC_NAME, ok("10.0.1.1"), proc=proc)

    emu.stop()
    # Ask throughout an outage of at least 4 failed rounds (and at least 6 s, 20 queries).
    # A query gets 3 s: a late reply on a loaded machine is not the failure this looks for
    # (that is SERVFAIL, NXDOMAIN or no reply at all).
    answers: list[Answer] = []
    names = [(ECI_NAME, ok(*ECI_IPS)), (VPC_NAME, ok("10.0.1.1"))]
    end = time.monotonic() + 6.0
    cap = time.monotonic() + LOADED_CAP

    def failed_rounds() -> int:
        return int(status(cfg)["sync"]["consecutive_failures"])

    while time.monotonic() < cap and (
        time.monotonic() < end or len(answers) < 20 or failed_rounds() < 4
    ):
        name, _ = names[len(answers) % 2]
        answers.append(ask(addr, name, timeout=3.0))
        time.sleep(0.1)
    bad = [(i, a) for i, a in enumerate(answers) if a != names[i % 2][1]]
    assert not bad, f"{len(bad)} of {len(answers)} queries failed during the outage: {bad[:5]}"
    assert len(answers) >= 20
    sync = status(cfg)["sync"]
    assert sync["consecutive_failures"] >= 4, sync
    assert sync["failures"].get("network", 0) >= 4 and "Cannot connect" in sync["last_error"]
    assert sync["origin"] == "privatelink"

    emu.set_zone("ep-vpc", f"{REGION}-h", eni_ip="10.0.1.99")
    emu.start()  # the same port again
    wait_answer(addr, VPC_NAME, ok("10.0.1.99"), proc=proc)
    wait_until(lambda: status(cfg)["sync"]["consecutive_failures"] == 0, LOADED_CAP, "recovery")
    assert "sync recovered after" in proc.err()
    assert proc.stop() == 0


# ---------------------------------------------------------------------------------------
# (d) a restart during an outage serves the snapshot
# ---------------------------------------------------------------------------------------


def test_restart_during_outage_serves_the_snapshot(
    run: Pldns, emu: OpenApiEmulator, tmp_path: Path
) -> None:
    snap = tmp_path / "state" / "snap.json"
    cfg = config(emu, sync={"snapshot": str(snap)})
    addr = dns_addr(cfg)
    first = run.serve("first", cfg)
    wait_answer(addr, ECI_NAME, ok(*ECI_IPS), proc=first)
    wait_until(snap.exists, LOADED_CAP, "the snapshot")
    saved = read(snap)
    assert saved.services["eci"].v4 == ("10.0.0.1", "10.0.0.2")
    assert saved.services["vpc"].v4 == ("10.0.1.1",)
    first.stop(signal.SIGKILL)  # a crash, not a clean shutdown

    emu.stop()
    second = run.serve("second", cfg)
    # The very first query is answered with the snapshot's addresses. No sync round can
    # have succeeded (the API is down), so that answer can only come from the snapshot: the
    # proof of "at once" is the event, not a stopwatch (3 s is only for a loaded machine).
    assert ask(addr, ECI_NAME, timeout=3.0) == ok(*ECI_IPS)
    assert ask(addr, VPC_NAME) == ok("10.0.1.1") and ask(addr, ECI_NAME, "AAAA") == ok("fd00::2")
    assert "serving from snapshot" in second.err()
    wait_until(lambda: status(cfg)["sync"]["failures"].get("network"), LOADED_CAP, "a failure")
    assert status(cfg)["sync"]["origin"] == "snapshot"
    readyz = f"http://{cfg['http']['listen']}/readyz"
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(readyz, timeout=2) as r:
        assert r.status == 200  # the snapshot counts as a loaded table
    assert ask(addr, ECI_NAME) == ok(*ECI_IPS)
    assert read(snap).services == saved.services  # a failed round does not touch it
    assert second.stop() == 0


# ---------------------------------------------------------------------------------------
# (e) throttling backs off
# ---------------------------------------------------------------------------------------


def test_throttling_backs_off_to_retry_after(run: Pldns, emu: OpenApiEmulator) -> None:
    cfg = config(emu)
    addr = dns_addr(cfg)
    proc = run.serve("serve", cfg)
    wait_answer(addr, ECI_NAME, ok(*ECI_IPS), proc=proc)

    # The emulator stamps each call when it answers it (time.monotonic(), this process):
    # the gaps below are measured where the calls happen, not where a busy test sees them.
    def watch(seconds: float, until: Callable[[], bool] = lambda: False) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not until():
            assert ask(addr, ECI_NAME, timeout=3.0) == ok(*ECI_IPS)  # never breaks
            time.sleep(0.02)

    emu.reset_calls()
    started = time.monotonic()
    watch(2.0)
    watch(LOADED_CAP, until=lambda: emu.count() >= 5)  # a slow machine: at least one round
    # Calls per 2 s without throttling: a round is 3 pages + 2 zone lists, one a second.
    normal = emu.count() * 2.0 / (time.monotonic() - started)
    assert emu.count() >= 5, emu.calls

    emu.reset_calls()
    emu.inject("throttle", count=3, action="ListVpcEndpoints", retry_after=2000)

    def recovered() -> bool:  # three throttled calls, then a ListVpcEndpoints that worked
        statuses = [c.status for c in list(emu.calls) if c.action == "ListVpcEndpoints"]
        return statuses.count(400) >= 3 and statuses[-1] == 200

    watch(LOADED_CAP, until=recovered)
    assert recovered(), emu.calls
    calls, stamps = list(emu.calls), list(emu.call_times)
    throttled = [i for i, c in enumerate(calls) if c.status == 400]
    assert len(throttled) == 3, calls
    assert all(calls[i].action == "ListVpcEndpoints" for i in throttled)
    t0 = stamps[throttled[0]]
    window = [t for t in stamps if t0 < t <= t0 + 2.0 - 0.1]
    assert len(window) <= 3, (len(window), calls)  # vs `normal` calls in 2 s without throttle
    assert len(window) < normal / 2
    gaps = [stamps[b] - stamps[a] for a, b in itertools.pairwise(throttled)]
    # retry_after (2 s) is a floor: a lower bound, so load can only make the gaps longer.
    assert all(gap >= 1.8 for gap in gaps), gaps
    sync = status(cfg)["sync"]
    assert sync["failures"]["throttled"] == 3
    assert ask(addr, ECI_NAME) == ok(*ECI_IPS)
    assert proc.stop() == 0


# ---------------------------------------------------------------------------------------
# (f) fan-out: one syncer with credentials, node resolvers following its file
# ---------------------------------------------------------------------------------------


def kubelet_swap(mount: Path, version: str, data: bytes) -> None:
    """What the kubelet does to a ConfigMap volume: a new dir, then swap ..data atomically."""
    (mount / version).mkdir()
    (mount / version / "snapshot.json").write_bytes(data)
    tmp = mount / "..data_tmp"
    tmp.symlink_to(version)
    os.replace(tmp, mount / "..data")


def test_fan_out_through_a_snapshot_file(run: Pldns, emu: OpenApiEmulator, tmp_path: Path) -> None:
    mount = tmp_path / "configmap"
    (mount / "..v1").mkdir(parents=True)
    (mount / "..data").symlink_to("..v1")
    (mount / "snapshot.json").symlink_to("..data/snapshot.json")

    syncer_cfg = run.write_config("syncer", config(emu))
    syncer = run.spawn(
        "syncer",
        ["sync", "--config", str(syncer_cfg), "--out", str(mount / "..v1" / "snapshot.json")],
    )
    wait_until((mount / "snapshot.json").exists, START_TIMEOUT, "the syncer's first snapshot")
    # The syncer's own endpoint: ready once a round worked, the sync families, its state.
    syncer_cfg_doc = yaml.safe_load(syncer_cfg.read_text())
    wait_until(lambda: status(syncer_cfg_doc)["ready"], START_TIMEOUT, "the syncer ready")
    base = f"http://{syncer_cfg_doc['http']['listen']}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(base + "/readyz", timeout=2) as resp:
        assert resp.status == 200
    with opener.open(base + "/metrics", timeout=2) as resp:
        metrics_text = resp.read().decode()
    assert "pldns_sync_attempts_total" in metrics_text and "pldns_ready 1.0" in metrics_text
    assert status(syncer_cfg_doc)["role"] == "syncer"
    # `pldns status` draws it as a syncer: role, lease, last publish, services and IPs, failures.
    rc, text, err = run.cli("status", ["status", "--url", base], credentials=False)
    assert rc == 0, text + err
    lines = text.splitlines()
    assert lines[0].startswith("READY  pldns ") and "syncer (no DNS listener)" in lines[0], text
    assert "region cn-hangzhou, VPC vpc-test" in lines[0], text
    assert any(line.startswith("LEASE     none (no --lease") for line in lines), text
    assert any(line.startswith("PUBLISH   file:") and " ago (" in line for line in lines), text
    assert any(line.split()[:4] == ["eci", ECI_NAME, f"{REGION}-h", "10.0.0.1"] for line in lines)
    assert any(line.startswith("FAILURES  none in ") for line in lines), text
    assert "listening on" not in text and "every query is forwarded" not in text

    node_cfg = config(
        None, sync={"source": "file", "file": str(mount / "snapshot.json"), "poll": 0.3}
    )
    addr = dns_addr(node_cfg)
    node = run.serve("node", node_cfg, credentials=False)
    assert not any(k.startswith("ALIBABA_CLOUD_ACCESS") for k in node.env)
    assert ask(addr, ECI_NAME) == ok(*ECI_IPS)  # served from the first file round
    assert ask(addr, VPC_NAME) == ok("10.0.1.1")
    assert ask(addr, ECS_NAME) == SERVFAIL

    emu.set_zone("ep-vpc", f"{REGION}-h", eni_ip="10.0.1.50")
    wait_answer(addr, VPC_NAME, ok("10.0.1.50"), proc=node)
    assert syncer.stop() == 0
    calls = emu.count()

    mine = Snapshot(
        REGION,
        {
            "eci": Addresses(("10.7.7.7",), ("fd00::77",)),
            "ecs": Addresses(("10.7.7.8",)),
        },
        time.time(),
    )
    kubelet_swap(mount, "..v2", encode(mine))
    wait_answer(addr, ECI_NAME, ok("10.7.7.7"), timeout=3.0, proc=node)
    assert ask(addr, ECI_NAME, "AAAA") == ok("fd00::77")
    assert ask(addr, ECS_NAME) == ok("10.7.7.8")
    assert ask(addr, VPC_NAME) == SERVFAIL  # not in the new snapshot

    kubelet_swap(mount, "..v3", b'{"format": "pldns-snapshot", "version": 1, "servi')
    wait_until(lambda: "not JSON" in node.err(), 3.0, "the bad file to be noticed")
    for _ in range(10):  # a few polls later, still the previous table
        assert ask(addr, ECI_NAME) == ok("10.7.7.7")
        assert ask(addr, ECS_NAME) == ok("10.7.7.8")
        time.sleep(0.1)
    sync = status(node_cfg)["sync"]
    assert sync["source"] == "file" and sync["failures"].get("invalid", 0) >= 1
    assert emu.count() == calls  # the node never called the API
    assert node.stop() == 0


# ---------------------------------------------------------------------------------------
# (g) secrets: also with debug logging and auth failures
# ---------------------------------------------------------------------------------------


def test_debug_logging_with_auth_errors_keeps_the_secret_out(
    run: Pldns, emu: OpenApiEmulator, tmp_path: Path
) -> None:
    snap = tmp_path / "snap.json"
    cfg = config(emu, log={"level": "debug", "queries": 1}, sync={"snapshot": str(snap)})
    addr = dns_addr(cfg)
    proc = run.serve("debug", cfg, DEBUG="sdk")
    wait_answer(addr, ECI_NAME, ok(*ECI_IPS), proc=proc)
    emu.inject("auth", count=1000)
    wait_until(lambda: "auth: Forbidden.RAM (HTTP 403)" in proc.err(), 4 * INTERVAL, "auth")
    assert "ERROR pldns.sync" in proc.err() and "request id " in proc.err()
    assert ask(addr, ECI_NAME) == ok(*ECI_IPS)
    assert status(cfg)["sync"]["failures"]["auth"] >= 1
    assert f"{ECI_NAME}. A NOERROR" in proc.err()  # the query log was on too
    assert proc.stop() == 0
    emu.clear_faults()

    # A wrong secret in the environment: auth, and that value never written either.
    path = run.write_config("once", config(emu))
    args = ["sync", "--once", "--config", str(path), "--log-level", "debug"]
    rc, _, err = run.cli("wrong", args, secret=WRONG_SECRET, DEBUG="sdk")
    assert rc == 1
    assert "sync failed: auth: SignatureDoesNotMatch (HTTP 400) (request id" in err
    # (the `run` fixture checks every file under tmp_path for both secrets)


# ---------------------------------------------------------------------------------------
# pldns discover
# ---------------------------------------------------------------------------------------


def test_discover_lists_endpoints_feeds_and_cloud_zones(run: Pldns, emu: OpenApiEmulator) -> None:
    emu.add_pvtz_zone(
        "zone-cp1",
        f"{REGION}.aliyuncs.com",
        vpcs=["vpc-test"],
        records=[("eci-vpc", "A", "10.0.0.1", 60), ("vpc-vpc", "A", "10.0.1.1", 60)],
    )
    emu.add_pvtz_zone("zone-cp2", "other.aliyuncs.com", vpcs=["vpc-other"])
    path = run.write_config("discover", config(emu))
    rc, out, err = run.cli("discover", ["discover", "--config", str(path)])
    assert rc == 0, err
    assert f"PrivateLink endpoints in vpc-test ({REGION}):" in out
    rows = [line.split() for line in out.splitlines()]
    assert [
        "ep-eci",
        ECI,
        f"{REGION}-h",
        "10.0.0.1",
        "Active/Connected",
        "zone",
        "Connected",
        "eci",
    ] in rows
    assert [
        "ep-vpc",
        VPC,
        f"{REGION}-h",
        "10.0.1.1",
        "Active/Connected",
        "zone",
        "Connected",
        "vpc",
    ] in rows
    assert any(
        r[:2] == ["ep-eci-pending", ECI] and r[-1] == "eci" and "Pending/Connected" in r
        for r in rows
    )
    assert any(r[0] == "ep-unrelated" and r[-1] == "-" for r in rows)
    assert "ep-eci-elsewhere" not in out
    assert "PrivateZone cloud-service zones bound to vpc-test:" in out
    assert f"  {REGION}.aliyuncs.com (zone-cp1)" in out
    assert f"    {ECI_NAME}  60  A  10.0.0.1" in out
    assert f"    {VPC_NAME}  60  A  10.0.1.1" in out
    assert "zone-cp2" not in out


def test_discover_fails_when_its_privatezone_part_fails(run: Pldns, emu: OpenApiEmulator) -> None:
    """Half an answer is a failure: the endpoints are printed, the PrivateZone error is one line
    on stderr that ends with what to do, and the exit status is 1."""
    emu.inject("auth", count=5, action="DescribeZones")
    path = run.write_config("discover-pvtz", config(emu))
    rc, out, err = run.cli("discover", ["discover", "--config", str(path)])
    assert rc == 1, out + err
    assert "ep-eci" in out and "PrivateZone cloud-service zones" not in out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("PrivateZone DescribeZones failed: auth: Forbidden.RAM (HTTP 403)")
    assert lines[0].endswith("pvtz:DescribeZones and pvtz:DescribeZoneRecords for discover)")
    run.check_no_tracebacks()


@pytest.mark.parametrize("command", [["discover"], ["sync", "--once"]])
def test_no_credentials_is_one_line_with_what_to_do(
    run: Pldns, emu: OpenApiEmulator, command: list[str]
) -> None:
    """The real SDK and its credentials chain, an empty environment (metadata off, as tests
    must never reach 100.100.100.200): one line per error, none cut mid-word, no traceback,
    and it ends with what to do."""
    path = run.write_config("nocreds", config(emu, sync={"snapshot": ""}))
    rc, out, err = run.cli("nocreds", [*command, "--config", str(path)], credentials=False)
    assert rc == 1, out + err
    assert "Traceback" not in err and "100.100.100.200" not in err
    errors = [line for line in err.splitlines() if "no credentials found" in line]
    assert errors and all(
        line.rstrip().endswith("run on ECS/ACK with a RAM role") for line in errors
    ), err
    assert all(
        "ALIBABA_CLOUD_ACCESS_KEY_ID and ALIBABA_CLOUD_ACCESS_KEY_SECRET" in line for line in errors
    )
    assert len(err.strip().splitlines()) <= 3, err  # sync: its start line, the error, the result
    assert emu.count() == 0  # nothing was sent without credentials


def test_first_start_says_it_waits_for_the_first_sync(run: Pldns, emu: OpenApiEmulator) -> None:
    """Before any sync, `serve` says it has no synced data yet (not "(static)"), and a snapshot
    file that does not exist yet is no warning: that is every first start."""
    snapshot = run.tmp / "state" / "snapshot.json"
    snapshot.parent.mkdir()
    cfg = config(emu, sync={"snapshot": str(snapshot)}, answers={"when_unknown": "forward"})
    proc = run.serve("first", cfg, credentials=False)
    serving = next(line for line in proc.err().splitlines() if "serving on" in line)
    assert serving.endswith(
        "(no privatelink data yet: answers.when_unknown (forward) until the first sync)"
    ), serving
    assert f"INFO pldns.sync: no snapshot at {snapshot} yet" in proc.err()
    assert "WARNING" not in proc.err().split("serving on")[0], proc.err()

"""Kubernetes publishing: the ConfigMap sink and Lease election against a local API emulator,
`pldns sync --configmap/--lease` end to end (real SDK -> OpenAPI emulator -> ConfigMap), and
a DaemonSet-style `pldns serve` following a kubelet-style ConfigMap mount.

Everything runs on 127.0.0.1 with short, bounded waits (leases of 1 s, renewals every 0.2 s).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype
import pytest
import yaml

from pldns.dns.table import Addresses
from pldns.sync.kube import (
    MANAGED_BY,
    ConfigMapSink,
    KubeClient,
    KubeConfig,
    KubeConfigError,
    KubeError,
    default_identity,
    kube_config,
    micro_time,
    parse_ref,
)
from pldns.sync.lease import LeaseElector
from pldns.sync.snapshot import Snapshot, decode, encode
from tests.emulator.kubeapi import KubeApiEmulator
from tests.fakes.proc import OWNED, REGION

NS = "pldns-system"
CM = "pldns-snapshot"
LEASE = "pldns-syncer"
TOKENS = {"token-a-0123456789": "a", "token-b-0123456789": "b"}
TOKEN_A, TOKEN_B = list(TOKENS)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def api() -> Iterator[KubeApiEmulator]:
    with KubeApiEmulator(tokens=TOKENS) as emulator:
        yield emulator


def client_for(api: KubeApiEmulator, token: str = TOKEN_A, aio: bool | None = None) -> KubeClient:
    return KubeClient(KubeConfig(api=api.url, token=token, timeout=2.0), use_aiohttp=aio)


def snapshot(*ips: str, service: str = "eci") -> bytes:
    v4 = tuple(ip for ip in ips if ":" not in ip)
    v6 = tuple(ip for ip in ips if ":" in ip)
    return encode(Snapshot(REGION, {service: Addresses(v4, v6, "privatelink")}, time.time()))


def stored(api: KubeApiEmulator) -> str | None:
    obj = api.configmap(NS, CM)
    return None if obj is None else (obj.get("data") or {}).get("snapshot.json")


async def publish(api: KubeApiEmulator, data: bytes, aio: bool | None = None, **kw: Any) -> None:
    client = client_for(api, aio=aio)
    try:
        await ConfigMapSink(client, NS, CM, **kw).publish(data)
    finally:
        await client.close()


# -- ConfigMapSink ------------------------------------------------------------------------


@pytest.mark.parametrize("aio", [True, False], ids=["aiohttp", "urllib"])
def test_sink_creates_then_updates_the_configmap(api: KubeApiEmulator, aio: bool) -> None:
    first, second = snapshot("10.0.0.5"), snapshot("10.0.0.6", "10.0.1.6")
    asyncio.run(publish(api, first, aio))
    obj = api.configmap(NS, CM)
    assert obj is not None and obj["data"]["snapshot.json"] == first.decode()
    assert obj["metadata"]["labels"][MANAGED_BY[0]] == MANAGED_BY[1]
    created_rv = obj["metadata"]["resourceVersion"]
    asyncio.run(publish(api, second, aio))
    obj = api.configmap(NS, CM)
    assert obj is not None and obj["data"]["snapshot.json"] == second.decode()
    assert obj["metadata"]["resourceVersion"] != created_rv
    assert decode(obj["data"]["snapshot.json"].encode()).services["eci"].v4 == (
        "10.0.0.6",
        "10.0.1.6",
    )
    assert api.count("POST", "configmaps", 201) == 1
    assert api.count("PUT", "configmaps", 200) == 1


def test_sink_updates_a_shipped_empty_configmap_and_keeps_other_keys(api: KubeApiEmulator) -> None:
    """The manifests ship the ConfigMap without data, so RBAC needs no `create`."""
    api.put(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": CM, "namespace": NS, "labels": {"team": "dns"}},
            "data": {"README": "written by pldns sync"},
        }
    )
    data = snapshot("10.0.0.5")
    asyncio.run(publish(api, data))
    obj = api.configmap(NS, CM)
    assert obj is not None
    assert obj["data"] == {"README": "written by pldns sync", "snapshot.json": data.decode()}
    assert obj["metadata"]["labels"] == {"team": "dns", MANAGED_BY[0]: MANAGED_BY[1]}
    assert api.count("POST", "configmaps") == 0
    asyncio.run(publish(api, data))  # unchanged: read, not written again
    assert api.count("PUT", "configmaps") == 1


def test_sink_retries_a_stale_resource_version(api: KubeApiEmulator) -> None:
    asyncio.run(publish(api, snapshot("10.0.0.5")))

    def someone_else_writes(emu: KubeApiEmulator) -> None:  # between our GET and our PUT
        obj = emu.configmap(NS, CM)
        assert obj is not None
        obj["data"]["other"] = "x"
        emu.put(obj)

    api.before("PUT", "configmaps", someone_else_writes)
    data = snapshot("10.0.0.7")
    asyncio.run(publish(api, data))
    obj = api.configmap(NS, CM)
    assert obj is not None and obj["data"] == {"snapshot.json": data.decode(), "other": "x"}
    assert api.count("PUT", "configmaps", 409) == 1
    assert api.count("PUT", "configmaps", 200) == 1


def test_sink_forced_conflict_then_server_error(api: KubeApiEmulator) -> None:
    asyncio.run(publish(api, snapshot("10.0.0.5")))
    api.fail(409, "PUT", "configmaps")
    asyncio.run(publish(api, snapshot("10.0.0.8")))  # 409 once: re-read and retried
    assert api.count("PUT", "configmaps", 409) == 1
    assert decode((stored(api) or "").encode()).services["eci"].v4 == ("10.0.0.8",)
    api.fail(500, "GET", "configmaps")
    with pytest.raises(KubeError) as caught:
        asyncio.run(publish(api, snapshot("10.0.0.9")))
    assert caught.value.status == 500  # not retried here: the sync loop tries on the next change
    asyncio.run(publish(api, snapshot("10.0.0.9")))
    assert decode((stored(api) or "").encode()).services["eci"].v4 == ("10.0.0.9",)


def test_sink_gives_up_after_bounded_conflicts(api: KubeApiEmulator) -> None:
    asyncio.run(publish(api, snapshot("10.0.0.5")))
    api.fail(409, "PUT", "configmaps", times=10)
    with pytest.raises(KubeError) as caught:
        asyncio.run(publish(api, snapshot("10.0.0.6"), retries=3))
    assert caught.value.status == 409
    assert api.count("PUT", "configmaps", 409) == 3


def test_sink_created_meanwhile_becomes_an_update(api: KubeApiEmulator) -> None:
    def create_first(emu: KubeApiEmulator) -> None:
        emu.put(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CM, "namespace": NS}}
        )

    api.before("POST", "configmaps", create_first)
    data = snapshot("10.0.0.5")
    asyncio.run(publish(api, data))
    assert stored(api) == data.decode()
    assert api.count("POST", "configmaps", 409) == 1


def test_bad_token_is_401_and_never_shown(api: KubeApiEmulator, tmp_path: Path) -> None:
    secret = "not-a-valid-token-5f2c9e"
    token_file = tmp_path / "token"
    token_file.write_text(secret + "\n")
    config = KubeConfig(api=api.url, token_file=str(token_file))
    client = KubeClient(config)

    async def run() -> None:
        try:
            await ConfigMapSink(client, NS, CM).publish(snapshot("10.0.0.5"))
        finally:
            await client.close()

    with pytest.raises(KubeError) as caught:
        asyncio.run(run())
    assert caught.value.status == 401
    assert secret not in str(caught.value) and secret not in repr(config)
    assert secret not in repr(KubeConfig(api="x", token=secret))
    token_file.write_text(TOKEN_A)  # rotated token: re-read on the next call
    asyncio.run(run())
    assert stored(api) is not None


def test_unreachable_api_is_a_kube_error() -> None:
    client = KubeClient(KubeConfig(api="http://127.0.0.1:9", token="t", timeout=1.0))

    async def run() -> None:
        try:
            await ConfigMapSink(client, NS, CM).publish(b"{}")
        finally:
            await client.close()

    with pytest.raises(KubeError) as caught:
        asyncio.run(run())
    assert caught.value.status == 0


# -- settings -----------------------------------------------------------------------------


def test_in_cluster_settings(tmp_path: Path) -> None:
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("tok\n")
    (sa / "ca.crt").write_text("")
    (sa / "namespace").write_text("pldns-system\n")
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    config = kube_config(env=env, sa_dir=str(sa))
    assert config.api == "https://10.96.0.1:443"
    assert config.token_file == str(sa / "token") and config.bearer() == "tok"
    assert config.ca_file == str(sa / "ca.crt")
    assert config.namespace == "pldns-system"
    v6 = kube_config(env={"KUBERNETES_SERVICE_HOST": "fd00::1"}, sa_dir=str(sa))
    assert v6.api == "https://[fd00::1]:443"
    local = kube_config("http://127.0.0.1:8080/", str(tmp_path / "t"), env={}, sa_dir=str(sa))
    assert local.api == "http://127.0.0.1:8080" and local.ca_file == ""
    with pytest.raises(KubeConfigError, match="KUBERNETES_SERVICE_HOST"):
        kube_config(env={}, sa_dir=str(tmp_path / "none"))
    with pytest.raises(KubeConfigError, match="URL"):
        kube_config("127.0.0.1:8080", env={})


@pytest.mark.parametrize(
    ("value", "default", "expected"),
    [
        ("pldns-system/pldns-snapshot", "", ("pldns-system", "pldns-snapshot")),
        ("pldns-snapshot", "kube-system", ("kube-system", "pldns-snapshot")),
        ("a/b.c-d", "", ("a", "b.c-d")),
    ],
)
def test_parse_ref(value: str, default: str, expected: tuple[str, str]) -> None:
    assert parse_ref(value, default) == expected


@pytest.mark.parametrize("value", ["name", "Bad/name", "ns/Name", "ns/", "a/b/c", "ns/-x"])
def test_parse_ref_rejects(value: str) -> None:
    with pytest.raises(KubeConfigError):
        parse_ref(value)


def test_identity_and_micro_time() -> None:
    assert default_identity({"POD_NAME": "pldns-syncer-abc"}) == "pldns-syncer-abc"
    assert default_identity({})
    assert micro_time(0) == "1970-01-01T00:00:00.000000Z"


# -- LeaseElector -------------------------------------------------------------------------


class Terms:
    """Records when each replica's work ran: (name, start, end) on the monotonic clock."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, float, float]] = []
        self.running: set[str] = set()

    def work(self, name: str) -> Callable[[asyncio.Event], Any]:
        async def run(lost: asyncio.Event) -> None:
            start = time.monotonic()
            assert not self.running, f"{name} started while {self.running} still worked"
            self.running.add(name)
            try:
                await lost.wait()
                await asyncio.sleep(3600)  # only cancellation ends a term
            finally:
                self.running.discard(name)
                self.spans.append((name, start, time.monotonic()))

        return run

    def assert_no_overlap(self) -> None:
        spans = sorted(self.spans, key=lambda s: s[1])
        for (n1, _, end1), (n2, start2, _) in itertools.pairwise(spans):
            assert end1 <= start2, f"{n1} still worked when {n2} started: {spans}"


# Lease timing for the election tests. The lease is long enough that a renewal held up by a
# busy machine (the emulator answers from threads of this process) stays well inside the
# renew deadline (2/3 of it): a leader must not lose its lease to load. Bounds on how soon
# something happens are lower bounds (load only makes things later); bounds on how late are
# CAP, far above what an idle machine needs, or a margin against the lease itself.
LEASE_S = 4
RENEW_S = 0.4  # a leader tolerates a renewal stalled for ~2.2 s (deadline 2.67 s)
CAP = 20.0
# B cannot take over before A's last renewal (before the cut) plus the lease; A renewed at
# most one period plus a round trip before the cut: 1.5 s is room for a slow round trip.
TAKEOVER_MIN = LEASE_S - 1.5


def elector(api: KubeApiEmulator, token: str, **kw: Any) -> LeaseElector:
    kw.setdefault("lease_duration", LEASE_S)
    kw.setdefault("renew_every", RENEW_S)
    return LeaseElector(client_for(api, token), NS, LEASE, TOKENS[token], **kw)


async def until(cond: Callable[[], bool], timeout: float) -> float:
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def test_two_electors_one_leader_at_a_time(api: KubeApiEmulator) -> None:
    terms = Terms()

    async def run() -> None:
        a, b = elector(api, TOKEN_A), elector(api, TOKEN_B)
        stop = asyncio.Event()
        tasks = [
            asyncio.ensure_future(a.run_as_leader(terms.work("a"), stop)),
            asyncio.ensure_future(b.run_as_leader(terms.work("b"), stop)),
        ]
        await until(lambda: a.is_leader or b.is_leader, CAP)
        leader = a if a.is_leader else b
        end = time.monotonic() + 2.0
        while time.monotonic() < end:  # several lease renewals: it stays with the same replica
            assert (a.is_leader, b.is_leader).count(True) == 1
            assert leader.is_leader and len(terms.running) == 1
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        await asyncio.gather(a.client.close(), b.client.close())
        assert (a.terms, b.terms) in ((1, 0), (0, 1))

    asyncio.run(run())
    terms.assert_no_overlap()
    lease = api.lease(NS, LEASE)
    assert lease is not None and "holderIdentity" not in lease["spec"]  # released at stop


def test_leader_that_stops_renewing_is_replaced_after_expiry(api: KubeApiEmulator) -> None:
    """A cut off from the API: its work stops before B, which waits out the lease, starts."""
    terms = Terms()

    async def run() -> None:
        a, b = elector(api, TOKEN_A), elector(api, TOKEN_B)
        stop = asyncio.Event()
        ta = asyncio.ensure_future(a.run_as_leader(terms.work("a"), stop))
        await until(lambda: a.is_leader, CAP)
        tb = asyncio.ensure_future(b.run_as_leader(terms.work("b"), stop))
        await asyncio.sleep(0.5)
        assert a.is_leader and not b.is_leader
        api.deny(TOKEN_A)  # every call of A now fails with 500
        cut = time.monotonic()
        # A gives up by itself, B takes over; that A's work ended before B's began is what
        # matters and is checked on the recorded spans (assert_no_overlap), load or not.
        await until(lambda: not a.is_leader, CAP)
        gave_up_at = time.monotonic()
        await until(lambda: b.is_leader, CAP)
        # B waited out the lease A last renewed (a lower bound, which load cannot break).
        assert time.monotonic() - cut >= TAKEOVER_MIN
        assert gave_up_at >= cut
        api.allow(TOKEN_A)  # A is back: it sees B's lease and stays a follower
        await asyncio.sleep(0.6)
        assert b.is_leader and not a.is_leader
        stop.set()
        await asyncio.wait_for(asyncio.gather(ta, tb), 5)
        await asyncio.gather(a.client.close(), b.client.close())

    asyncio.run(run())
    terms.assert_no_overlap()
    assert [name for name, _, _ in sorted(terms.spans, key=lambda s: s[1])] == ["a", "b"]


def test_crashed_leader_is_replaced_after_expiry_and_graceful_stop_hands_over_fast(
    api: KubeApiEmulator,
) -> None:
    terms = Terms()

    async def run() -> None:
        a, b = elector(api, TOKEN_A), elector(api, TOKEN_B)
        stop_a, stop_b = asyncio.Event(), asyncio.Event()
        ta = asyncio.ensure_future(a.run_as_leader(terms.work("a"), stop_a))
        await until(lambda: a.is_leader, CAP)
        tb = asyncio.ensure_future(b.run_as_leader(terms.work("b"), stop_b))
        await asyncio.sleep(0.3)
        api.deny(TOKEN_A)  # a crash: no more renewals, no release
        ta.cancel()
        await asyncio.gather(ta, return_exceptions=True)
        crashed = time.monotonic()
        await until(lambda: b.is_leader, CAP)
        # Not before the lease ran out (a lower bound: load only makes it later).
        assert time.monotonic() - crashed >= TAKEOVER_MIN
        api.allow(TOKEN_A)
        # A graceful stop releases the lease: a new candidate gets it within a poll or two.
        c = elector(api, TOKEN_A)
        tc = asyncio.ensure_future(c.run_as_leader(terms.work("c"), stop_b))
        await asyncio.sleep(0.3)
        assert not c.is_leader
        stop_b.set()  # stops B (and C, which shares the event), B releasing
        await asyncio.wait_for(asyncio.gather(tb, tc), 5)
        lease = api.lease(NS, LEASE)
        assert lease is not None and not lease["spec"].get("holderIdentity")
        d = elector(api, TOKEN_A)
        stop_d = asyncio.Event()
        td = asyncio.ensure_future(d.run_as_leader(terms.work("d"), stop_d))
        handed = await until(lambda: d.is_leader, CAP)
        # No wait for expiry after a release: one poll (~RENEW_S) against a LEASE_S wait.
        assert handed < LEASE_S - 0.5, handed
        stop_d.set()
        await asyncio.wait_for(td, 5)
        for e in (a, b, c, d):
            await e.client.close()

    asyncio.run(run())
    terms.assert_no_overlap()


def test_elector_uses_a_shipped_empty_lease_and_counts_transitions(api: KubeApiEmulator) -> None:
    api.put(
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": LEASE, "namespace": NS},
            "spec": {},
        }
    )

    async def run() -> None:
        a = elector(api, TOKEN_A)
        assert await a.try_acquire_or_renew()
        assert await a.try_acquire_or_renew()  # a renewal
        spec = (api.lease(NS, LEASE) or {})["spec"]
        assert spec["holderIdentity"] == "a" and spec["leaseDurationSeconds"] == LEASE_S
        assert spec["acquireTime"] < spec["renewTime"]
        b = elector(api, TOKEN_B)
        assert not await b.try_acquire_or_renew()  # held, and not expired by B's clock
        await a.release()
        assert await b.try_acquire_or_renew()
        assert (api.lease(NS, LEASE) or {})["spec"]["leaseTransitions"] == 2
        await asyncio.gather(a.client.close(), b.client.close())

    asyncio.run(run())
    assert api.count("POST", "leases") == 0


def test_elector_settings_are_checked() -> None:
    client = KubeClient(KubeConfig(api="http://127.0.0.1:9"))
    with pytest.raises(ValueError):
        LeaseElector(client, NS, LEASE, "x", lease_duration=1, renew_every=1)
    e = LeaseElector(client, NS, LEASE, "x")
    assert (e.lease_seconds, e.renew_every, e.renew_deadline) == (15, 5, 10)  # client-go's


# -- `pldns sync` with the Kubernetes options ----------------------------------------------


@pytest.fixture
def cloud(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from tests.emulator import OpenApiEmulator
    from tests.emulator.sdk import clear_proxy_env

    clear_proxy_env(monkeypatch)
    with OpenApiEmulator(region=REGION) as emu:
        emu.add_endpoint(
            "ep-eci",
            f"com.aliyuncs.privatelink.{REGION}.eci",
            vpc_id="vpc-test",
            zones=[{"zone_id": f"{REGION}-h", "eni_ip": "10.8.0.5"}],
        )
        yield emu


def sync_setup(tmp_path: Path, cloud: Any, api: KubeApiEmulator) -> tuple[Path, dict[str, str]]:
    from tests.emulator import TEST_ACCESS_KEY_ID, TEST_ACCESS_KEY_SECRET

    config = {
        "region": REGION,
        "services": {"eci": {"domains": ["eci-vpc.{region}.aliyuncs.com"]}},
        "answers": {"ttl": 1},
        "sync": {"source": "privatelink", "interval": 1, "jitter": 0},
        "http": {"listen": "off"},  # two replicas on one host would share its port
        "privatelink": {
            "vpc_id": "vpc-test",
            "endpoint": cloud.endpoint,
            "protocol": "http",
            "connect_timeout": 2,
            "read_timeout": 2,
        },
    }
    path = tmp_path / "sync.yaml"
    path.write_text(yaml.safe_dump(config))
    for name, token in (("a", TOKEN_A), ("b", TOKEN_B)):
        (tmp_path / f"token-{name}").write_text(token)
    env = {k: v for k, v in os.environ.items() if "PROXY" not in k.upper()}
    env.update(
        PYTHONPATH=str(REPO),
        ALIBABA_CLOUD_ACCESS_KEY_ID=TEST_ACCESS_KEY_ID,
        ALIBABA_CLOUD_ACCESS_KEY_SECRET=TEST_ACCESS_KEY_SECRET,
        ALIBABA_CLOUD_ECS_METADATA_DISABLED="true",
    )
    return path, env


def sync_command(path: Path, api: KubeApiEmulator, token_file: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "pldns", "sync", "--config", str(path),
        "--configmap", f"{NS}/{CM}", "--kube-api", api.url, "--kube-token-file", str(token_file),
        *extra,
    ]  # fmt: skip


def test_pldns_sync_once_publishes_to_the_configmap(
    tmp_path: Path, cloud: Any, api: KubeApiEmulator
) -> None:
    path, env = sync_setup(tmp_path, cloud, api)
    out = tmp_path / "snap.json"
    cmd = sync_command(path, api, tmp_path / "token-a", "--once", "--out", str(out))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "10.8.0.5" in done.stdout
    text = stored(api)
    assert text is not None and text == out.read_text()  # --out and --configmap together
    assert decode(text.encode()).services["eci"].v4 == ("10.8.0.5",)
    assert TOKEN_A not in done.stdout + done.stderr
    # Without permission to write the snapshot, --once fails instead of claiming success.
    bad = tmp_path / "token-bad"
    bad.write_text("nope")
    failed = subprocess.run(
        sync_command(path, api, bad, "--once"), env=env, capture_output=True, text=True, timeout=30
    )
    assert failed.returncode == 1 and "401" in failed.stderr, failed.stderr
    refused = subprocess.run(
        sync_command(path, api, bad, "--once", "--lease", f"{NS}/{LEASE}"),
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode == 2 and "--lease" in refused.stderr


def test_two_pldns_sync_replicas_only_the_leader_publishes(
    tmp_path: Path, cloud: Any, api: KubeApiEmulator
) -> None:
    path, env = sync_setup(tmp_path, cloud, api)
    # As the manifests ship them: both objects exist, empty, so RBAC needs no `create`.
    api.put({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CM, "namespace": NS}})
    api.put(
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": LEASE, "namespace": NS},
            "spec": {},
        }
    )
    procs = []
    for name in ("a", "b"):
        cmd = sync_command(path, api, tmp_path / f"token-{name}", "--lease", f"{NS}/{LEASE}")
        log = open(tmp_path / f"sync-{name}.log", "wb")  # noqa: SIM115
        procs.append(
            subprocess.Popen(cmd, env={**env, "POD_NAME": f"pldns-syncer-{name}"}, stdout=log,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO)
        )  # fmt: skip
        log.close()
    try:
        end = time.monotonic() + CAP
        while stored(api) is None and time.monotonic() < end:
            time.sleep(0.1)
        assert stored(api) is not None, (tmp_path / "sync-a.log").read_text()
        end = time.monotonic() + CAP  # a few more sync rounds of the leader (~1 s each)
        while cloud.count("ListVpcEndpoints") < 2 and time.monotonic() < end:
            time.sleep(0.1)
        time.sleep(0.5)  # room for the other replica to (wrongly) write, were it going to
        holder = (api.lease(NS, LEASE) or {})["spec"]["holderIdentity"]
        writers = {
            c.who for c in api.calls if c.method in ("PUT", "POST") and "configmaps" in c.path
        }
        assert writers == {holder[-1]}, (holder, writers)
        cloud_calls = cloud.count("ListVpcEndpoints")
        assert cloud_calls >= 2  # the leader keeps syncing; the other does not call the cloud
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(15) for proc in procs]
    logs = "".join((tmp_path / f"sync-{n}.log").read_text() for n in "ab")
    assert codes == [0, 0], logs
    assert "Traceback" not in logs and TOKEN_A not in logs and TOKEN_B not in logs
    assert not (api.lease(NS, LEASE) or {})["spec"].get("holderIdentity")  # released on SIGTERM


# -- a DaemonSet-style node resolver following a ConfigMap mount ---------------------------


class KubeletMount:
    """A directory laid out as the kubelet mounts a ConfigMap volume (AtomicWriter):
    `..<timestamp>/` holds the files, `..data` -> that directory, `<key>` -> `..data/<key>`;
    an update writes a new timestamped directory and renames a new `..data` link over the old.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True)

    def write(self, files: dict[str, str]) -> None:
        stamp = datetime.now(UTC).strftime("..%Y_%m_%d_%H_%M_%S.%f")
        new = self.root / stamp
        new.mkdir()
        for name, text in files.items():
            (new / name).write_text(text)
        data = self.root / "..data"
        old = os.readlink(data) if data.is_symlink() else None
        tmp = self.root / "..data_tmp"
        os.symlink(stamp, tmp)
        os.rename(tmp, data)  # the atomic swap
        for name in files:
            link = self.root / name
            if not link.is_symlink():
                os.symlink(f"..data/{name}", link)
        if old:
            shutil.rmtree(self.root / old)


def a_records(addr: tuple[str, int], name: str) -> set[str]:
    reply = dns.query.udp(dns.message.make_query(name, "A"), addr[0], port=addr[1], timeout=3.0)
    return {rd.address for rrset in reply.answer for rd in rrset if rrset.rdtype == dns.rdatatype.A}


def test_node_resolver_follows_the_configmap_mount(
    tmp_path: Path, api: KubeApiEmulator, pldns: Callable[..., Any]
) -> None:
    asyncio.run(publish(api, snapshot("10.9.0.5", "10.9.1.5")))
    mount = KubeletMount(tmp_path / "mount")
    mount.write({"snapshot.json": stored(api) or ""})
    server = pldns(
        services={"eci": {"domains": ["eci-vpc.{region}.aliyuncs.com"]}},
        sync={"source": "file", "file": str(mount.root / "snapshot.json"), "poll": 0.5},
        lifecycle={"lame_duck": 0.2, "drain": 1},
    )
    assert a_records(server.addr, OWNED) == {"10.9.0.5", "10.9.1.5"}
    asyncio.run(publish(api, snapshot("10.9.2.7")))
    mount.write({"snapshot.json": stored(api) or ""})  # what the kubelet does on its next sync
    start = time.monotonic()
    while a_records(server.addr, OWNED) != {"10.9.2.7"}:
        # poll is 0.5 s; the cap is for a loaded machine (a stuck watcher still fails it)
        assert time.monotonic() - start < CAP, f"the new IPs were not served within {CAP} s"
        time.sleep(0.1)

"""The sync loop, sources and snapshot with fakes (no network): Syncer rounds and backoff,
partial failures, the last-known-good snapshot, FileSource, and classify() of real SDK errors.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from alibabacloud_credentials.exceptions import CredentialException
from alibabacloud_tea_openapi.exceptions import (
    ClientException,
    ServerException,
    ThrottlingException,
)
from darabonba.exceptions import RetryError, UnretryableException
from darabonba.policy.retry import RetryPolicyContext

from pldns.config import Config, parse_config
from pldns.dns.table import Addresses, RecordTable
from pldns.dns.wire import encode_name
from pldns.sync.loop import Syncer, SyncState
from pldns.sync.privatelink import classify
from pldns.sync.snapshot import (
    FileSink,
    Snapshot,
    SnapshotError,
    decode,
    encode,
    read,
    write_atomic,
)
from pldns.sync.source import FileSource, SourceError, SourceResult

REGION = "cn-hangzhou"
ECI_NAME = "eci-vpc.cn-hangzhou.aliyuncs.com"
VPC_NAME = "vpc-vpc.cn-hangzhou.aliyuncs.com"


def make_config(**sync: Any) -> Config:
    return parse_config(
        {
            "region": REGION,
            "listen": ["127.0.0.1:5353"],
            "upstreams": ["127.0.0.1:53"],
            "answers": {"ttl": 1},
            "services": {
                "eci": {"domains": ["eci-vpc.{region}.aliyuncs.com"]},
                "vpc": {"domains": ["vpc-vpc.{region}.aliyuncs.com"]},
                "acs": {
                    "domains": ["acc-vpc.{region}.aliyuncs.com"],
                    "static": ["192.168.9.9"],
                },
            },
            "sync": {"source": "privatelink", "interval": 60, "jitter": 0.1, **sync},
            "privatelink": {"vpc_id": "vpc-test"},
        }
    )


def addrs(*ips: str, endpoint: str = "ep-1") -> Addresses:
    v4 = tuple(ip for ip in ips if ":" not in ip)
    v6 = tuple(ip for ip in ips if ":" in ip)
    detail = tuple(
        {"ip": ip, "zone": "cn-hangzhou-h", "endpoint": endpoint, "status": "Connected"}
        for ip in ips
    )
    return Addresses(v4, v6, "privatelink", detail)


class FakeSource:
    """An EndpointSource that plays back a script: results, None (no change) or errors."""

    kind = "privatelink"

    def __init__(self, *script: SourceResult | BaseException | None) -> None:
        self.script = list(script)
        self.calls = 0

    def then(self, *items: SourceResult | BaseException | None) -> None:
        self.script.extend(items)

    async def fetch(self) -> SourceResult | None:
        self.calls += 1
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item


class MemorySink:
    name = "memory"

    def __init__(self) -> None:
        self.published: list[bytes] = []

    async def publish(self, data: bytes) -> None:
        self.published.append(data)


class BrokenSink:
    name = "broken"

    async def publish(self, data: bytes) -> None:
        raise OSError(28, "No space left on device")


class Harness:
    """A Syncer wired to a fake source, recording every table it publishes."""

    def __init__(self, source: FakeSource, config: Config | None = None, **kwargs: Any) -> None:
        self.tables: list[RecordTable] = []
        self.syncer = Syncer(config or make_config(), source, self.tables.append, **kwargs)
        self.syncer.start_static()

    def round(self) -> bool:
        return asyncio.run(self.syncer.round())

    @property
    def table(self) -> RecordTable:
        return self.tables[-1]

    def ips(self, service: str) -> tuple[str, ...]:
        return tuple(sorted(self.table.services[service].v4 + self.table.services[service].v6))

    @property
    def state(self) -> SyncState:
        return self.syncer.state


# -- rounds ------------------------------------------------------------------------------


def test_round_publishes_addresses_and_keeps_static_services() -> None:
    h = Harness(FakeSource(SourceResult({"eci": addrs("10.0.0.1"), "vpc": addrs("10.0.1.1")})))
    assert not h.table.loaded  # static only: not ready before the first sync
    assert h.round()
    assert h.table.loaded and h.state.origin == "privatelink"
    assert h.ips("eci") == ("10.0.0.1",) and h.ips("vpc") == ("10.0.1.1",)
    assert h.ips("acs") == ("192.168.9.9",)  # static services are not the source's business
    owned = h.table.get(encode_name(ECI_NAME))
    assert owned is not None and owned.known and owned.a_count == 1
    assert h.state.attempts == 1 and h.state.last_success is not None


def test_partial_failure_keeps_that_services_old_ips_while_others_update() -> None:
    source = FakeSource(
        SourceResult({"eci": addrs("10.0.0.1", "10.0.0.2"), "vpc": addrs("10.0.1.1")}),
        SourceResult(
            # eci's second endpoint failed: what came back for eci is partial.
            {"eci": addrs("10.0.0.1"), "vpc": addrs("10.0.1.7")},
            incomplete=frozenset({"eci"}),
            errors={"ep-eci-2": "server: InternalError (HTTP 500)"},
        ),
    )
    h = Harness(source)
    assert h.round() and h.round()
    assert h.ips("eci") == ("10.0.0.1", "10.0.0.2")  # kept whole
    assert h.ips("vpc") == ("10.0.1.7",)  # updated
    assert h.state.partial == {"ep-eci-2": "server: InternalError (HTTP 500)"}
    assert h.state.consecutive_failures == 0  # a partial round is not a failed round
    # Next complete round: the partial marker goes away and eci updates.
    source.then(SourceResult({"eci": addrs("10.0.0.3"), "vpc": addrs("10.0.1.7")}))
    assert h.round()
    assert h.ips("eci") == ("10.0.0.3",) and h.state.partial == {}


def test_incomplete_service_never_seen_before_takes_what_came() -> None:
    result = SourceResult({"eci": addrs("10.0.0.1")}, incomplete=frozenset({"eci"}))
    h = Harness(FakeSource(result))
    assert h.round()
    assert h.ips("eci") == ("10.0.0.1",)


def test_failed_round_keeps_table_and_records_state() -> None:
    source = FakeSource(
        SourceResult({"eci": addrs("10.0.0.1"), "vpc": addrs("10.0.1.1")}),
        SourceError("network", "Cannot connect to host"),
        SourceError("throttled", "Throttling.User (HTTP 400)", "REQ-1", 1.5),
    )
    h = Harness(source)
    assert h.round()
    published = len(h.tables)
    good = h.table
    success_at = h.state.last_success
    assert not h.round()
    assert len(h.tables) == published and h.table is good  # publish not called
    st = h.state
    assert st.consecutive_failures == 1 and st.failures["network"] == 1
    assert st.last_error == "network: Cannot connect to host" and st.last_error_at is not None
    assert st.last_success == success_at and st.origin == "privatelink"
    assert not h.round()
    assert st.consecutive_failures == 2 and st.failures["throttled"] == 1
    assert st.last_error == "throttled: Throttling.User (HTTP 400) (request id REQ-1)"
    assert len(h.tables) == published
    source.then(None)  # recovered, nothing changed
    assert h.round()
    assert st.consecutive_failures == 0 and st.last_success and st.last_success >= success_at
    assert len(h.tables) == published and st.attempts == 4


def test_unexpected_exception_is_a_failed_round_not_a_crash() -> None:
    h = Harness(FakeSource(RuntimeError("SDK surprise")))
    assert not h.round()
    assert h.state.failures["client"] == 1
    assert "RuntimeError: SDK surprise" in h.state.last_error


def test_unknown_reason_is_bounded() -> None:
    assert SourceError("weird", "x").reason == "client"


def test_run_loop_survives_failures_and_stops_promptly() -> None:
    source = FakeSource(
        SourceError("network", "down"),
        SourceError("timeout", "slow"),
        SourceResult({"eci": addrs("10.0.0.1")}),
        *([None] * 1000),
    )
    h = Harness(source, rand=lambda: 0.5)
    h.syncer.interval = 0.01

    async def run() -> None:
        stop = asyncio.Event()
        # The backoff after failures is seconds; patch delay to keep the test fast.
        h.syncer.delay = lambda ok: 0.01  # type: ignore[method-assign]
        task = asyncio.create_task(h.syncer.run(stop))
        while source.calls < 5:
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 2)

    asyncio.run(run())
    assert h.ips("eci") == ("10.0.0.1",)
    assert h.state.failures == {"network": 1, "timeout": 1}


# -- delay (backoff) ---------------------------------------------------------------------


def delay_after(errors: list[SourceError], rand: float = 0.5, **sync: Any) -> float:
    h = Harness(FakeSource(*errors), make_config(**sync), rand=lambda: rand)
    for _ in errors:
        assert not h.round()
    return h.syncer.delay(False)


@pytest.mark.parametrize(("rand", "expected"), [(0.0, 54.0), (0.5, 60.0), (1.0, 66.0)])
def test_delay_success_is_interval_plus_minus_jitter(rand: float, expected: float) -> None:
    h = Harness(FakeSource(), rand=lambda: rand)
    assert h.syncer.delay(True) == pytest.approx(expected)


def test_delay_failures_back_off_2_4_8_capped_at_interval() -> None:
    err = SourceError("network", "down")
    got = [delay_after([err] * n) for n in range(1, 8)]
    assert got == pytest.approx([2, 4, 8, 16, 32, 60, 60])
    # Jitter spreads the backoff too.
    assert delay_after([err], rand=1.0) == pytest.approx(2.2)
    assert delay_after([err], rand=0.0) == pytest.approx(1.8)
    # A short interval caps the very first retry.
    assert delay_after([err], interval=1) == pytest.approx(1.0)


def test_delay_auth_waits_the_full_interval() -> None:
    err = SourceError("auth", "Forbidden.RAM (HTTP 403)")
    assert delay_after([err]) == pytest.approx(60)
    assert delay_after([err] * 3) == pytest.approx(60)


@pytest.mark.parametrize("rand", [0.0, 0.5, 1.0])
def test_delay_throttle_retry_after_is_a_floor(rand: float) -> None:
    # Above the backoff: retry_after wins (even past the interval).
    far = SourceError("throttled", "Throttling", retry_after=90.0)
    assert delay_after([far], rand=rand) >= 90.0
    assert delay_after([far], rand=rand) <= 90.0 * 1.1
    assert delay_after([far], rand=0.0) == pytest.approx(90.0)
    # Below the backoff: the backoff stays.
    near = SourceError("throttled", "Throttling", retry_after=1.5)
    assert delay_after([near], rand=rand) >= 1.8
    assert delay_after([near] * 3, rand=0.5) == pytest.approx(8.0)
    # Without retry_after it is an ordinary backoff.
    assert delay_after([SourceError("throttled", "x")], rand=0.5) == pytest.approx(2.0)


def test_delay_file_source_uses_poll() -> None:
    config = make_config(source="file", file="/nonexistent", poll=0.5, jitter=0)
    h = Harness(FakeSource(), config)
    assert h.syncer.delay(True) == pytest.approx(0.5)


# -- the last-known-good snapshot --------------------------------------------------------


def test_snapshot_written_atomically_only_on_change(tmp_path: Path) -> None:
    path = tmp_path / "state" / "snap.json"
    source = FakeSource(
        SourceResult({"eci": addrs("10.0.0.1"), "vpc": addrs("10.0.1.1")}),
        SourceResult({"eci": addrs("10.0.0.1"), "vpc": addrs("10.0.1.1")}),  # same
        None,  # no change
        SourceError("network", "down"),
        SourceResult({"eci": addrs("10.0.0.2"), "vpc": addrs("10.0.1.1")}),
    )
    mem = MemorySink()
    h = Harness(source, sinks=[FileSink(str(path)), mem])
    assert h.round()
    first = path.stat()
    snap = read(path)
    assert snap.services["eci"].v4 == ("10.0.0.1",) and snap.region == REGION
    assert set(snap.services) == {"eci", "vpc"}  # static services are not persisted
    assert h.state.snapshot_writes == 2 and len(mem.published) == 1
    for _ in range(3):
        h.round()
    assert path.stat().st_ino == first.st_ino and path.stat().st_mtime_ns == first.st_mtime_ns
    assert len(mem.published) == 1 and h.state.snapshot_writes == 2
    assert h.round()
    assert path.stat().st_ino != first.st_ino  # replaced by rename, not rewritten in place
    assert read(path).services["eci"].v4 == ("10.0.0.2",)
    assert len(mem.published) == 2 and mem.published[-1] == path.read_bytes()
    assert [p.name for p in path.parent.iterdir()] == ["snap.json"]  # no temp files left


def test_snapshot_never_written_empty(tmp_path: Path) -> None:
    path = tmp_path / "snap.json"
    empty = {"eci": Addresses(origin="privatelink"), "vpc": Addresses(origin="privatelink")}
    source = FakeSource(SourceResult(empty), SourceResult({"eci": addrs("10.0.0.1"), **{}}))
    h = Harness(source, sinks=[FileSink(str(path))])
    assert h.round()
    assert not path.exists() and h.state.snapshot_writes == 0
    assert h.round()
    assert read(path).services["eci"].v4 == ("10.0.0.1",)


def test_corrupt_snapshot_at_start_is_reported_and_not_overwritten_by_empty(
    tmp_path: Path,
) -> None:
    path = tmp_path / "snap.json"
    path.write_bytes(b'{"format": "pldns-snapshot", "version": 1, "services": ')
    empty = {"eci": Addresses(origin="privatelink"), "vpc": Addresses(origin="privatelink")}
    h = Harness(FakeSource(SourceResult(empty)), sinks=[FileSink(str(path))])
    assert h.syncer.load_snapshot(str(path)) is False
    assert h.state.snapshot_errors == 1 and h.state.origin == "static"
    assert not h.table.loaded
    assert h.round()
    assert path.read_bytes().startswith(b'{"format": "pldns-snapshot", "version": 1, "serv')
    assert h.state.snapshot_writes == 0


def test_first_start_without_a_snapshot_is_no_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No file yet is the normal first start: said at info level, not counted as an error."""
    path = tmp_path / "snap.json"
    h = Harness(FakeSource(SourceResult({"eci": addrs("10.0.0.1")})), sinks=[FileSink(str(path))])
    with caplog.at_level(logging.INFO, logger="pldns.sync"):
        assert h.syncer.load_snapshot(str(path)) is False
    assert h.state.snapshot_errors == 0
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, f"no snapshot at {path} yet: it is written after the first good sync")
    ]
    assert h.round() and read(path).services["eci"].v4 == ("10.0.0.1",)


def test_good_snapshot_at_start_is_served_then_replaced_by_the_source(tmp_path: Path) -> None:
    path = tmp_path / "snap.json"
    snap = Snapshot(REGION, {"eci": addrs("10.0.0.1"), "gone": addrs("10.9.9.9")}, 1_700_000_000)
    write_atomic(path, encode(snap))
    source = FakeSource(
        SourceError("network", "API down at start"),
        SourceResult({"eci": addrs("10.0.0.5"), "vpc": addrs("10.0.1.1")}),
    )
    h = Harness(source, sinks=[FileSink(str(path))])
    assert h.syncer.load_snapshot(str(path))
    assert h.table.loaded and h.state.origin == "snapshot"
    assert h.state.data_time == pytest.approx(1_700_000_000)
    assert h.ips("eci") == ("10.0.0.1",) and "gone" not in h.table.services  # not configured
    assert not h.round()
    assert h.ips("eci") == ("10.0.0.1",)  # an outage at start still answers
    assert h.round()
    assert h.ips("eci") == ("10.0.0.5",) and h.state.origin == "privatelink"
    assert read(path).services["eci"].v4 == ("10.0.0.5",)


def test_broken_sink_is_counted_and_retried_on_next_change(tmp_path: Path) -> None:
    source = FakeSource(
        SourceResult({"eci": addrs("10.0.0.1")}), SourceResult({"eci": addrs("10.0.0.1")})
    )
    h = Harness(source, sinks=[BrokenSink()])
    assert h.round()
    assert h.state.snapshot_errors == 1 and h.ips("eci") == ("10.0.0.1",)
    assert h.round()  # nothing was published, so the same content is tried again
    assert h.state.snapshot_errors == 2


def test_write_atomic_leaves_the_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "snap.json"
    write_atomic(path, b"old\n")
    with pytest.raises(TypeError):
        write_atomic(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == b"old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["snap.json"]
    assert oct(path.stat().st_mode & 0o777) == "0o644"


# -- snapshot encoding -------------------------------------------------------------------


def test_snapshot_round_trip() -> None:
    services = {
        "eci": addrs("10.0.0.1", "10.0.0.2", "fd00::1"),
        "vpc": Addresses(("10.0.1.1",), (), "privatelink", ({"ip": "10.0.1.1", "zone": "k"},)),
    }
    snap = Snapshot(REGION, services, 1_700_000_000.5)
    data = encode(snap)
    doc = json.loads(data)
    assert (doc["format"], doc["version"], doc["region"]) == ("pldns-snapshot", 1, REGION)
    assert doc["generated_at"].startswith("2023-11-14T22:13:20.5")
    back = decode(data, origin="file")
    assert back.region == REGION and back.generated_at == pytest.approx(snap.generated_at)
    for name, original in services.items():
        got = back.services[name]
        assert (got.v4, got.v6, got.origin) == (original.v4, original.v6, "file")
        assert [dict(d) for d in got.detail] == [dict(d) for d in original.detail]
    assert encode(decode(data, origin="privatelink")) == data  # stable
    assert not back.empty and Snapshot(REGION, {"eci": Addresses()}, 0).empty


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(format="something-else"), "not a pldns-snapshot document"),
        (lambda d: d.pop("format"), "not a pldns-snapshot document"),
        (lambda d: d.update(version=2), "version 2 is not supported"),
        (lambda d: d.pop("version"), "version None is not supported"),
        (lambda d: d["services"]["eci"]["addresses"][0].update(ip="10.0.0.300"), "malformed"),
        (lambda d: d["services"]["eci"]["addresses"][0].update(ip="eci.example"), "malformed"),
        (lambda d: d["services"]["eci"]["addresses"][0].pop("ip"), "malformed"),
        (lambda d: d.update(services=[]), "malformed"),
        (lambda d: d.update(generated_at="yesterday"), "malformed"),
        (lambda d: d.pop("generated_at"), "malformed"),
    ],
)
def test_decode_rejects(mutate: Any, message: str) -> None:
    doc = json.loads(encode(Snapshot(REGION, {"eci": addrs("10.0.0.1")}, 1_700_000_000)))
    mutate(doc)
    with pytest.raises(SnapshotError, match=message):
        decode(json.dumps(doc).encode())


@pytest.mark.parametrize("raw", [b"", b"{not json", b"\xff\xfe", b"[]", b"null", b'"x"'])
def test_decode_rejects_non_documents(raw: bytes) -> None:
    with pytest.raises(SnapshotError):
        decode(raw)


def test_read_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError, match="cannot read"):
        read(tmp_path / "nope.json")


# -- FileSource ------------------------------------------------------------------------


def write_snapshot(path: Path, **services: Addresses) -> None:
    write_atomic(path, encode(Snapshot(REGION, services, 1_700_000_000)))


def fetch(source: FileSource) -> SourceResult | None:
    return asyncio.run(source.fetch())


def test_file_source_unchanged_none_changed_result(tmp_path: Path) -> None:
    path = tmp_path / "snap.json"
    write_snapshot(path, eci=addrs("10.0.0.1"))
    source = FileSource(str(path))
    first = fetch(source)
    assert first is not None and first.addresses["eci"].v4 == ("10.0.0.1",)
    assert first.addresses["eci"].origin == "file"
    assert first.generated_at == pytest.approx(1_700_000_000)
    assert fetch(source) is None
    write_snapshot(path, eci=addrs("10.0.0.2"))
    second = fetch(source)
    assert second is not None and second.addresses["eci"].v4 == ("10.0.0.2",)


def test_file_source_invalid_file_keeps_previous_table(tmp_path: Path) -> None:
    path = tmp_path / "snap.json"
    write_snapshot(path, eci=addrs("10.0.0.1"))
    source = FileSource(str(path))
    config = make_config(source="file", file=str(path))
    h = Harness(source, config)  # type: ignore[arg-type]
    assert h.round() and h.ips("eci") == ("10.0.0.1",) and h.state.origin == "file"
    published = len(h.tables)
    write_atomic(path, b'{"format": "pldns-snapshot", "version": 1, "serv')
    assert not h.round()
    assert h.state.failures["invalid"] == 1 and "not JSON" in h.state.last_error
    assert len(h.tables) == published and h.ips("eci") == ("10.0.0.1",)
    # The same bad file is not re-read every poll, but it keeps counting as a failure, so
    # status and metrics show the file is still bad rather than "synced".
    with pytest.raises(SourceError, match="not JSON"):
        fetch(source)
    assert not h.round() and h.state.consecutive_failures == 2
    write_snapshot(path, eci=addrs("10.0.0.3"))
    assert h.round() and h.ips("eci") == ("10.0.0.3",)
    path.unlink()
    assert not h.round() and h.ips("eci") == ("10.0.0.3",)
    assert "does not exist" in h.state.last_error


def test_file_source_follows_kubelet_symlink_swap(tmp_path: Path) -> None:
    """ConfigMap volume layout: name -> ..data/name, ..data -> ..<timestamp> (swapped)."""
    mount = tmp_path / "cm"
    (mount / "..v1").mkdir(parents=True)
    write_snapshot(mount / "..v1" / "snap.json", eci=addrs("10.0.0.1"))
    (mount / "..data").symlink_to("..v1")
    (mount / "snap.json").symlink_to("..data/snap.json")
    source = FileSource(str(mount / "snap.json"))
    assert fetch(source).addresses["eci"].v4 == ("10.0.0.1",)  # type: ignore[union-attr]
    # A new version, same size and same mtime: only the inode tells them apart.
    (mount / "..v2").mkdir()
    new = mount / "..v2" / "snap.json"
    write_snapshot(new, eci=addrs("10.0.0.2"))
    old = (mount / "..v1" / "snap.json").stat()
    os.utime(new, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert new.stat().st_size == old.st_size
    (mount / "..data_tmp").symlink_to("..v2")
    os.replace(mount / "..data_tmp", mount / "..data")  # the kubelet's atomic swap
    got = fetch(source)
    assert got is not None and got.addresses["eci"].v4 == ("10.0.0.2",)
    assert fetch(source) is None


# -- classify(): real SDK exceptions -----------------------------------------------------


CONNECT_REFUSED = OSError(
    "Cannot connect to host 127.0.0.1:1 ssl:False [Connect call failed ('127.0.0.1', 1)]"
)
READ_TIMEOUT = aiohttp.ServerTimeoutError("Timeout on reading data from socket")
CONNECT_TIMEOUT = aiohttp.ConnectionTimeoutError("Connection timeout to host http://127.0.0.1:1")


NO_CREDENTIALS = (
    "unable to load credentials from any of the providers in the chain: "
    "['EnvironmentVariableCredentialsProvider: Environment variable accessKeyId cannot be empty']"
)


def unretryable(inner: BaseException) -> UnretryableException:
    return UnretryableException(RetryPolicyContext(retries_attempted=0, exception=inner))


@pytest.mark.parametrize(
    ("err", "reason", "retry_after", "request_id"),
    [
        (
            ThrottlingException(
                code="Throttling.User", status_code=400, retry_after=1500, request_id="R1"
            ),
            "throttled",
            1.5,
            "R1",
        ),
        (ThrottlingException(code="Throttling", status_code=400), "throttled", None, ""),
        (ClientException(code="Throttling", status_code=400), "throttled", None, ""),
        (ClientException(code="Throttling.Api", status_code=400), "throttled", None, ""),
        (ServerException(code="ServiceUnavailable", status_code=503), "throttled", None, ""),
        (
            ClientException(code="Forbidden.RAM", status_code=403, request_id="R2"),
            "auth",
            None,
            "R2",
        ),
        (ClientException(code="InvalidAccessKeyId.NotFound", status_code=404), "auth", None, ""),
        (ClientException(code="SignatureDoesNotMatch", status_code=400), "auth", None, ""),
        (ClientException(code="NoPermission", status_code=403), "auth", None, ""),
        (ClientException(code="InvalidSecurityToken.Expired", status_code=400), "auth", None, ""),
        (ClientException(code="Something", status_code=401), "auth", None, ""),
        (
            ServerException(code="InternalError", status_code=500, request_id="R3"),
            "server",
            None,
            "R3",
        ),
        (ServerException(code="Gateway", status_code=502), "server", None, ""),
        (ClientException(code="IllegalParam.NextToken", status_code=400), "client", None, ""),
        (ClientException(code="EndpointNotFound", status_code=400), "client", None, ""),
        # What the SDK really raises for transport failures: aiohttp's error, turned into
        # RetryError(str(e)) by darabonba, wrapped in UnretryableException (autoretry off).
        (unretryable(RetryError(str(CONNECT_REFUSED))), "network", None, ""),
        (unretryable(RetryError("[Errno 104] Connection reset by peer")), "network", None, ""),
        (unretryable(RetryError(str(READ_TIMEOUT))), "timeout", None, ""),
        (unretryable(RetryError(str(CONNECT_TIMEOUT))), "timeout", None, ""),
        (unretryable(ConnectionResetError(104, "Connection reset by peer")), "network", None, ""),
        # An empty credentials chain is a credentials problem, not a network one.
        (unretryable(CredentialException(NO_CREDENTIALS)), "auth", None, ""),
        (CredentialException(NO_CREDENTIALS), "auth", None, ""),
        (
            unretryable(FileNotFoundError(2, "No such file", "/etc/pldns/creds.ini")),
            "auth",
            None,
            "",
        ),
        (TimeoutError(), "timeout", None, ""),
        (OSError("socket read timed out"), "timeout", None, ""),
        (ConnectionRefusedError(111, "refused"), "network", None, ""),
    ],
)
def test_classify(err: BaseException, reason: str, retry_after: float | None, request_id: str):
    got = classify(err)
    assert (got.reason, got.retry_after, got.request_id) == (reason, retry_after, request_id)
    assert str(got).startswith(f"{reason}: ")


def test_classify_duck_typed_throttling_and_passthrough() -> None:
    class ThrottlingException(Exception):  # any SDK's class of that name, by name
        code = "Throttling.User"
        status_code = 400
        retry_after = 250
        request_id = "R9"

    got = classify(ThrottlingException())
    assert (got.reason, got.retry_after, got.request_id) == ("throttled", 0.25, "R9")

    class Legacy(Exception):  # Tea-era errors spell it statusCode
        code = "Gateway.Busy"
        statusCode = 503

    assert classify(Legacy()).reason == "throttled"
    original = SourceError("auth", "x")
    assert classify(original) is original


SDK_SECRET = "sdk-secret-value-Qm4x"


@pytest.mark.parametrize(
    "err",
    [
        # The SDK's error objects carry the server's message and the whole response body;
        # a SignatureDoesNotMatch body echoes the string to sign, here with the secret in it.
        ClientException(
            code="SignatureDoesNotMatch",
            status_code=400,
            message=f"Specified signature is not matched: {SDK_SECRET}",
            data={"Message": f"server string to sign ... {SDK_SECRET}", "Recommend": SDK_SECRET},
            request_id="R4",
        ),
        ThrottlingException(
            code="Throttling.User", status_code=400, message=SDK_SECRET, data={"x": SDK_SECRET}
        ),
        ServerException(code="InternalError", status_code=500, message=SDK_SECRET),
        ClientException(code="IllegalParam.NextToken", status_code=400, message=SDK_SECRET),
    ],
    ids=["auth", "throttled", "server", "client"],
)
def test_classify_messages_carry_no_secret(err: Exception) -> None:
    """What classify() keeps (code, status, request id) never includes the message or body."""
    assert SDK_SECRET in f"{err} {err.message} {err.data}"  # type: ignore[attr-defined]
    got = classify(err)
    assert SDK_SECRET not in f"{got} {got!r} {got.request_id}"
    assert str(got).startswith(f"{got.reason}: {err.code} (HTTP {err.status_code})")  # type: ignore[attr-defined]


def test_classify_signature_mismatch_says_what_to_check() -> None:
    err = ClientException(
        code="SignatureDoesNotMatch",
        status_code=400,
        message="Specified signature is not matched with our calculation.",
        data={"Message": "server string to sign ..."},
        request_id="R4",
    )
    assert str(classify(err)) == (
        "auth: SignatureDoesNotMatch (HTTP 400) (request id R4): the AccessKey secret does not "
        "match its ID: check ALIBABA_CLOUD_ACCESS_KEY_SECRET or the credentials file"
    )

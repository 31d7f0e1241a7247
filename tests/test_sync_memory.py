"""The sync loop over long runs and fleet events (issue #10): capped backoff for 10^6 failures,
the supervised sync task, never publishing less than is known (adopting what is published,
keeping a service's addresses for keep_rounds, refusing an all-empty round), reloads that
carry the addresses over, the heartbeat, region checks and errors said once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from pathlib import Path
from typing import Any

import pytest

from pldns.app import App, source_identity
from pldns.config import Config, parse_config
from pldns.dns.table import Addresses
from pldns.sync.kube import ConfigMapSink, KubeClient, KubeConfig
from pldns.sync.loop import Syncer
from pldns.sync.snapshot import FileSink, Snapshot, decode, encode, read, write_atomic
from pldns.sync.source import FileSource, SourceError, SourceResult
from pldns.sync.task import TaskHealth, supervise
from tests.emulator.kubeapi import KubeApiEmulator
from tests.test_sync import FakeSource, MemorySink, addrs, make_config

ECI = addrs("10.0.0.1", "10.0.0.2")
VPC = addrs("10.0.1.1", endpoint="ep-2")


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def result(**services: Addresses) -> SourceResult:
    return SourceResult({"eci": Addresses(), "vpc": Addresses(), **services})


def syncer(source: FakeSource, config: Config | None = None, **kw: Any) -> Syncer:
    tables: list[Any] = []
    s = Syncer(config or make_config(), source, tables.append, **kw)
    s.tables = tables  # type: ignore[attr-defined]
    s.start_static()
    return s


def served(s: Syncer, service: str) -> tuple[str, ...]:
    return tuple(sorted(s.tables[-1].services[service].v4))  # type: ignore[attr-defined]


# -- 1. capped backoff and the supervised task ----------------------------------------------


def test_delay_is_capped_for_a_million_failures_in_a_row(caplog: Any) -> None:
    s = syncer(FakeSource(), rand=lambda: 0.5)
    err = SourceError("network", "Cannot connect", code="ConnectError")
    caplog.set_level(logging.WARNING, "pldns.sync")
    waits = set()
    for _ in range(10**6):
        s._failed(err)
        waits.add(s.delay(False))
    assert s.state.consecutive_failures == 10**6
    assert max(waits) == s.interval and all(math.isfinite(w) and w > 0 for w in waits)
    assert sorted(waits)[:3] == [2.0, 4.0, 8.0]
    assert len(caplog.records) == 1  # said once, not a million times
    assert dict(s.state.failures) == {"network": 10**6}


class Surprise(BaseException):
    """Not an Exception: the sync round's own `except Exception` does not catch it."""


def test_sync_task_that_dies_is_logged_counted_and_restarted(caplog: Any) -> None:
    source = FakeSource(result(eci=ECI), Surprise("boom"), result(eci=addrs("10.0.0.7")))
    s = syncer(source, make_config(interval=1, jitter=0))
    health = TaskHealth()
    waits: list[float] = []

    async def fake_wait(stop: asyncio.Event, seconds: float) -> None:
        waits.append(seconds)
        if len(waits) >= 3:
            stop.set()

    async def main() -> None:
        stop = asyncio.Event()

        async def body() -> None:
            while not stop.is_set():
                await s.round()
                await fake_wait(stop, 0)

        await supervise("sync", body, stop, health, wait=fake_wait)

    asyncio.run(main())
    assert health.restarts == 1 and "Surprise: boom" in health.last_crash
    assert served(s, "eci") == ("10.0.0.7",)  # the restarted task went on syncing
    assert "sync task ended (Surprise: boom); restart 1 in 1.0s" in caplog.text


def test_supervised_restarts_stay_capped_and_bounded_for_a_long_crash_loop() -> None:
    health = TaskHealth()
    waits: list[float] = []
    clock = Clock(0.0)
    logging.getLogger("pldns.sync").disabled = True
    try:

        async def body() -> None:
            raise KeyError("bad shape")

        async def wait(stop: asyncio.Event, seconds: float) -> None:
            waits.append(seconds)
            clock.now += seconds
            if len(waits) >= 10**5:
                stop.set()

        asyncio.run(supervise("sync", body, asyncio.Event(), health, clock=clock, wait=wait))
    finally:
        logging.getLogger("pldns.sync").disabled = False
    assert health.restarts == 10**5 and max(waits) == 60.0 and waits[:3] == [1.0, 2.0, 4.0]
    assert not health.running


def test_sync_task_that_returns_is_restarted_too() -> None:
    health = TaskHealth()
    runs = []

    async def body() -> None:
        runs.append(1)

    async def wait(stop: asyncio.Event, seconds: float) -> None:
        if len(runs) >= 2:
            stop.set()

    asyncio.run(supervise("sync", body, asyncio.Event(), health, wait=wait))
    assert len(runs) == 2 and health.restarts == 2 and health.last_crash == "returned"


def test_app_sync_task_crash_shows_in_status_metrics_and_table_state(tmp_path: Path) -> None:
    """An App whose source raises an unexpected class: restarted, counted, visible."""
    from pldns.metrics import render
    from pldns.status import build_status

    config = make_config(interval=1, jitter=0)

    async def main() -> dict[str, Any]:
        app = App(config, upstreams=())
        app.syncer.source = FakeSource(Surprise("from the SDK"), result(eci=ECI), result(eci=ECI))
        app._start_sync()
        for _ in range(400):  # the first restart comes after 1 s
            if app.sync_state.task.restarts and app.resolver.table.loaded:
                break
            await asyncio.sleep(0.01)
        doc = build_status(app)
        metrics = render(app)[0].decode()
        table = app.table_state()
        app.request_stop()
        assert app.sync_task is not None
        await asyncio.wait_for(app.sync_task, 5)
        return {"doc": doc, "metrics": metrics, "table": table}

    got = asyncio.run(main())
    assert got["doc"]["sync"]["task"]["restarts"] == 1
    assert "Surprise" in got["doc"]["sync"]["task"]["last_crash"]
    assert "pldns_sync_task_restarts_total 1.0" in got["metrics"]
    assert got["table"] == (True, "loaded")


def test_table_state_shows_a_task_waiting_to_restart() -> None:
    app = App(make_config(), upstreams=())
    app.sync_task = object()  # type: ignore[assignment]
    app.resolver.table = app.resolver.table.__class__(loaded=True)
    app.sync_state.task.restarts, app.sync_state.task.last_crash = 1, "Surprise: x"
    assert app.table_state() == (False, "sync task restarting after: Surprise: x")
    assert app.ready() == (False, "listeners not bound")  # readiness is the listeners


# -- 2. never publish less than it knows --------------------------------------------------


def test_new_process_adopts_the_published_file_before_a_failing_first_round(
    tmp_path: Path,
) -> None:
    out = tmp_path / "snapshot.json"
    write_atomic(out, encode(Snapshot("cn-hangzhou", {"eci": ECI, "vpc": VPC}, 1000.0)))
    s = syncer(
        FakeSource(result(vpc=addrs("10.0.1.9"), eci=Addresses())), sinks=[FileSink(str(out))]
    )
    s.source.script[0] = SourceResult(  # type: ignore[union-attr]
        {"eci": Addresses(), "vpc": addrs("10.0.1.9")}, incomplete=frozenset({"eci"})
    )  # ListVpcEndpointZones failed for eci's endpoint in the very first round
    assert asyncio.run(s.adopt_published())
    assert served(s, "eci") == ("10.0.0.1", "10.0.0.2")
    assert asyncio.run(s.round())
    snap = read(out)
    assert sorted(snap.services["eci"].v4) == ["10.0.0.1", "10.0.0.2"]
    assert snap.services["vpc"].v4 == ("10.0.1.9",)
    assert served(s, "eci") == ("10.0.0.1", "10.0.0.2")


def test_new_term_adopts_the_configmap_written_by_another_leader() -> None:
    with KubeApiEmulator(tokens={"tok": "syncer"}) as api:

        async def main() -> tuple[bytes | None, Syncer]:
            client = KubeClient(KubeConfig(api=api.url, token="tok"), use_aiohttp=False)
            sink = ConfigMapSink(client, "pldns-system", "pldns-snapshot")
            other = Snapshot("cn-hangzhou", {"eci": ECI, "vpc": VPC}, 1000.0)
            await sink.publish(encode(other))  # the previous leader
            s = syncer(
                FakeSource(SourceResult(result(vpc=VPC).addresses, frozenset({"eci"}))),
                sinks=[sink],
            )
            assert await s.adopt_published()
            assert await s.round()
            data = await sink.read()
            await client.close()
            return data, s

        data, _ = asyncio.run(main())
    assert data is not None
    snap = decode(data)
    assert sorted(snap.services["eci"].v4) == ["10.0.0.1", "10.0.0.2"]  # kept, not emptied


def test_adopt_skips_a_foreign_region_and_survives_an_unreachable_api(caplog: Any) -> None:
    class Down:
        name = "configmap:x/y"

        async def read(self) -> bytes:
            raise OSError("connection refused")

        async def publish(self, data: bytes) -> None:
            raise OSError("connection refused")

    class Foreign:
        name = "file:foreign"

        async def read(self) -> bytes:
            return encode(Snapshot("cn-beijing", {"eci": ECI}, 1000.0))

        async def publish(self, data: bytes) -> None: ...

    s = syncer(FakeSource(), sinks=[Down(), Foreign()])
    assert not asyncio.run(s.adopt_published())
    assert s.fed == {}
    assert "could not read the published snapshot" in caplog.text
    assert "is for region 'cn-beijing'" in caplog.text


def test_service_that_loses_its_ips_keeps_them_for_keep_rounds(tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    rounds = [result(eci=ECI, vpc=VPC)] + [result(vpc=VPC)] * 4 + [result(eci=ECI, vpc=VPC)]
    s = syncer(FakeSource(*rounds), make_config(keep_rounds=2), sinks=[FileSink(str(out))])
    asyncio.run(s.round())
    seen = []
    for _ in range(4):
        assert asyncio.run(s.round())
        seen.append((served(s, "eci"), sorted(read(out).services["eci"].v4), dict(s.state.held)))
    kept = ("10.0.0.1", "10.0.0.2")
    assert seen[0] == (kept, list(kept), {"eci": 1})
    assert seen[1] == (kept, list(kept), {"eci": 2})
    assert seen[2] == ((), [], {})  # dropped after keep_rounds
    assert seen[3] == ((), [], {})
    asyncio.run(s.round())
    assert served(s, "eci") == kept and s.state.held == {}


def test_all_empty_round_is_refused_for_the_table_and_the_snapshot(tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    s = syncer(
        FakeSource(result(eci=ECI, vpc=VPC), *[result()] * 10),
        make_config(keep_rounds=0),
        sinks=[FileSink(str(out))],
    )
    assert asyncio.run(s.round())
    before = out.read_bytes()
    for _ in range(10):  # no bound: the previous table stays however long it lasts
        assert not asyncio.run(s.round())
    assert served(s, "eci") == ("10.0.0.1", "10.0.0.2") and served(s, "vpc") == ("10.0.1.1",)
    assert out.read_bytes() == before
    assert s.state.failures["invalid"] == 10 and s.state.refused_empty == 10
    assert "no usable address for any service" in s.state.last_error


def test_first_round_that_finds_nothing_is_not_refused() -> None:
    s = syncer(FakeSource(result()))
    assert asyncio.run(s.round()) and s.state.failures["invalid"] == 0


# -- 3. reload ----------------------------------------------------------------------------


def _with(config: Config, **privatelink: Any) -> Config:
    return parse_config(
        {
            "region": "cn-hangzhou",
            "listen": ["127.0.0.1:5353"],
            "upstreams": ["127.0.0.1:53"],
            "answers": {"ttl": 1},
            "services": {
                "eci": {"domains": ["eci-vpc.{region}.aliyuncs.com"]},
                "vpc": {"domains": ["vpc-vpc.{region}.aliyuncs.com"]},
            },
            "sync": {"source": "privatelink", "interval": 60},
            "privatelink": {"vpc_id": "vpc-test", **privatelink},
        }
    )


@pytest.mark.parametrize(
    ("change", "same_source"),
    [
        ({"read_timeout": 3.0}, True),
        ({"https_proxy": "http://proxy:3128"}, True),
        ({"page_size": 10}, True),
        ({"vpc_id": "vpc-other"}, False),
        ({"endpoint": "privatelink.example"}, False),
        ({"region": "cn-beijing"}, False),
    ],
)
def test_reload_carries_synced_addresses_over(change: dict[str, Any], same_source: bool) -> None:
    old = _with(make_config())
    new = _with(make_config(), **change)
    assert (source_identity(old) == source_identity(new)) is same_source

    async def main() -> App:
        app = App(old, upstreams=())
        app.syncer.source = FakeSource(result(eci=ECI, vpc=VPC))
        await app.syncer.round()
        app.syncer = app._new_syncer(new, app.syncer)
        return app

    app = asyncio.run(main())
    assert sorted(app.resolver.table.services["eci"].v4) == ["10.0.0.1", "10.0.0.2"]
    assert app.syncer.fed["vpc"].v4 == ("10.0.1.1",)


# -- 5. heartbeat and region ---------------------------------------------------------------


def test_heartbeat_republishes_unchanged_data_with_a_fresh_time() -> None:
    clock = Clock()
    sink = MemorySink()
    config = make_config(interval=60, heartbeat=3)
    s = syncer(FakeSource(*[result(eci=ECI)] * 8), config, sinks=[sink], clock=clock)
    times = []
    for _ in range(8):
        asyncio.run(s.round())
        clock.now += 60
    for data in sink.published:
        times.append(decode(data).generated_at)
    # Written at rounds 0, 3, 6: every 3 intervals although nothing changed.
    assert [t - times[0] for t in times] == [0, 180, 360]
    assert s.state.data_time == clock.now - 60  # every good round confirms


def test_node_age_follows_the_syncers_heartbeat(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.json"
    write_atomic(path, encode(Snapshot("cn-hangzhou", {"eci": ECI}, 1000.0)))
    node = Syncer(make_config(source="file", file=str(path)), FileSource(str(path), "cn-hangzhou"),
                  lambda t: None)  # fmt: skip
    assert asyncio.run(node.round()) and node.state.data_time == 1000.0
    write_atomic(path, encode(Snapshot("cn-hangzhou", {"eci": ECI}, 2000.0)))  # heartbeat
    assert asyncio.run(node.round()) and node.state.data_time == 2000.0


def test_snapshot_for_another_region_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.json"
    write_atomic(path, encode(Snapshot("cn-beijing", {"eci": ECI}, 1000.0)))
    source = FileSource(str(path), "cn-hangzhou")
    with pytest.raises(SourceError, match="for region 'cn-beijing'") as err:
        asyncio.run(source.fetch())
    assert err.value.reason == "invalid"
    s = syncer(FakeSource())
    assert not s.load_snapshot(str(path)) and s.state.snapshot_errors == 1


# -- 6. errors said once, failing sinks ------------------------------------------------------


def test_auth_error_logged_once_though_each_request_id_differs(caplog: Any) -> None:
    errors = [
        SourceError("auth", "InvalidAccessKeyId.NotFound (HTTP 404)", f"RID-{i}",
                    code="InvalidAccessKeyId.NotFound")
        for i in range(5)
    ]  # fmt: skip
    other = SourceError("auth", "Forbidden.RAM (HTTP 403)", "RID-9", code="Forbidden.RAM")
    s = syncer(FakeSource(*errors, other))
    for _ in range(6):
        asyncio.run(s.round())
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(lines) == 2, lines
    assert "RID-0" in lines[0] and "Forbidden.RAM" in lines[1]
    assert s.state.last_error.endswith("(request id RID-9)")


def test_a_failing_sink_does_not_stop_the_later_ones(tmp_path: Path) -> None:
    class Broken:
        name = "broken"

        async def publish(self, data: bytes) -> None:
            raise OSError(28, "No space left on device")

    good = MemorySink()
    s = syncer(FakeSource(result(eci=ECI), result(eci=ECI)), sinks=[Broken(), good])
    asyncio.run(s.round())
    assert len(good.published) == 1 and s.state.snapshot_errors == 1
    asyncio.run(s.round())  # unchanged: the good sink is not rewritten, the broken one retried
    assert len(good.published) == 1 and s.state.snapshot_errors == 2
    assert json.loads(good.published[0])["services"]["eci"]["addresses"][0]["ip"] == "10.0.0.1"

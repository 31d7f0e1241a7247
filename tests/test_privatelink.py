"""PrivateLinkSource with the real Alibaba Cloud SDK against the local OpenAPI emulator:
paging, the usable rule, matching, the VPC filter, IPv6, partial failures, throttling, auth.
Loopback only; each test runs its own emulator on a free port.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alibabacloud_privatelink20200415.client import Client as PrivateLinkClient

from pldns.config import Config, parse_config
from pldns.dns.table import RecordTable
from pldns.sync.loop import Syncer
from pldns.sync.privatelink import PrivateLinkSource
from pldns.sync.snapshot import FileSink, read
from pldns.sync.source import SourceError, SourceResult
from tests.emulator import TEST_ACCESS_KEY_ID, TEST_ACCESS_KEY_SECRET, OpenApiEmulator
from tests.emulator.sdk import sdk_config

REGION = "cn-hangzhou"
ECI = f"com.aliyuncs.privatelink.{REGION}.eci"
VPC = f"com.aliyuncs.privatelink.{REGION}.vpc"
ECS = f"com.aliyuncs.privatelink.{REGION}.ecs-internal"
ACS = f"com.aliyuncs.privatelink.{REGION}.acc-internal"
REQUEST_ID = re.compile(r"^[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}$")


@pytest.fixture
def emu() -> Iterator[OpenApiEmulator]:
    with OpenApiEmulator(region=REGION) as emulator:
        yield emulator


def make_config(emu: OpenApiEmulator, **privatelink: Any) -> Config:
    return parse_config(
        {
            "region": REGION,
            "listen": ["127.0.0.1:5353"],
            "upstreams": ["127.0.0.1:53"],
            "answers": {"ttl": 1},
            "services": {
                "eci": {"domains": ["eci-vpc.{region}.aliyuncs.com"]},  # default service name
                "vpc": {"domains": ["vpc-vpc.{region}.aliyuncs.com"]},
                "ecs": {
                    "domains": ["ecs-vpc.{region}.aliyuncs.com"],
                    "privatelink": {"endpoint_id": "ep-ecs"},
                },
                "acs": {
                    "domains": ["acc-vpc.{region}.aliyuncs.com"],
                    "privatelink": {"endpoint_name": "acs-endpoint"},
                },
                "tagged": {
                    "domains": ["tagged.example.com"],
                    "privatelink": {"tags": {"pldns": "tagged", "team": "dns"}},
                },
                "static": {"domains": ["static.example.com"], "static": ["192.168.0.1"]},
            },
            "sync": {"source": "privatelink", "interval": 1, "jitter": 0},
            "privatelink": {
                "vpc_id": "vpc-test",
                "endpoint": emu.endpoint,
                "pvtz_endpoint": emu.endpoint,
                "protocol": "http",
                "page_size": 2,
                "connect_timeout": 1,
                "read_timeout": 2,
                **privatelink,
            },
        }
    )


def make_source(
    emu: OpenApiEmulator, config: Config | None = None, **sdk: Any
) -> PrivateLinkSource:
    """The source with a real SDK client holding explicit test keys.

    (The credentials package reads its environment at import time, so in-process tests pass
    keys explicitly; the environment chain is covered by the subprocess tests.)"""
    config = config or make_config(emu)
    client = PrivateLinkClient(sdk_config(emu, **sdk))
    return PrivateLinkSource(config.privatelink, config.region, config.services, client=client)


def fleet(emu: OpenApiEmulator) -> None:
    """Nine endpoints in vpc-test (five pages of two), one elsewhere."""
    emu.add_endpoint(
        "ep-eci",
        ECI,
        zones=[
            {"zone_id": f"{REGION}-h", "eni_ip": "10.0.0.1"},
            {"zone_id": f"{REGION}-i", "eni_ip": "10.0.0.2", "ipv6": "fd00::2"},
            {"zone_id": f"{REGION}-j", "eni_ip": "10.0.0.3", "status": "Disconnected"},
            {"zone_id": f"{REGION}-k", "eni_ip": "10.0.0.4"},
            {"zone_id": f"{REGION}-l", "eni_ip": "10.0.0.5", "status": "Connecting"},
        ],
    )
    emu.add_endpoint(
        "ep-eci-pending", ECI, status="Pending", zones=[{"zone_id": "z", "eni_ip": "10.0.9.1"}]
    )
    emu.add_endpoint("ep-vpc", VPC, zones=[{"zone_id": "z", "eni_ip": "10.0.1.1"}])
    emu.add_endpoint(
        "ep-vpc-disconnected",
        VPC,
        connection="Disconnected",
        zones=[{"zone_id": "z", "eni_ip": "10.0.9.2"}],
    )
    emu.add_endpoint("ep-ecs", ECS, zones=[{"zone_id": "z", "eni_ip": "10.0.2.1"}])
    emu.add_endpoint(
        "ep-acs", ACS, name="acs-endpoint", zones=[{"zone_id": "z", "eni_ip": "10.0.3.1"}]
    )
    emu.add_endpoint(
        "ep-tag",
        ACS,
        name="something",
        tags={"pldns": "tagged", "team": "dns", "extra": "x"},
        zones=[{"zone_id": "z", "eni_ip": "10.0.4.1"}],
    )
    emu.add_endpoint(
        "ep-tag-half",
        ACS,
        tags={"pldns": "tagged"},
        zones=[{"zone_id": "z", "eni_ip": "10.0.9.3"}],
    )
    emu.add_endpoint(
        "ep-ecs-lookalike", ECS, name="ecs", zones=[{"zone_id": "z", "eni_ip": "10.0.9.4"}]
    )
    emu.add_endpoint(
        "ep-eci-other-vpc", ECI, vpc_id="vpc-other", zones=[{"zone_id": "z", "eni_ip": "10.0.9.5"}]
    )


def fetch(source: PrivateLinkSource) -> SourceResult:
    return asyncio.run(source.fetch())


def fetch_error(source: PrivateLinkSource) -> SourceError:
    with pytest.raises(SourceError) as info:
        fetch(source)
    return info.value


def ips(result: SourceResult, service: str) -> tuple[list[str], list[str]]:
    a = result.addresses[service]
    return sorted(a.v4), sorted(a.v6)


def test_paging_usable_rule_matching_vpc_and_ipv6(emu: OpenApiEmulator) -> None:
    fleet(emu)
    source = make_source(emu)
    result = fetch(source)
    # Only Connected zones of Active+Connected endpoints, only in vpc-test.
    assert ips(result, "eci") == (["10.0.0.1", "10.0.0.2", "10.0.0.4"], ["fd00::2"])
    assert ips(result, "vpc") == (["10.0.1.1"], [])
    assert ips(result, "ecs") == (["10.0.2.1"], [])  # by endpoint_id
    assert ips(result, "acs") == (["10.0.3.1"], [])  # by endpoint_name
    assert ips(result, "tagged") == (["10.0.4.1"], [])  # by tags, all must match
    assert "static" not in result.addresses  # static services are not the source's
    assert not result.incomplete and not result.errors
    eci = result.addresses["eci"]
    assert eci.origin == "privatelink"
    facts = {d["ip"]: d for d in eci.detail}
    assert facts["fd00::2"]["zone"] == f"{REGION}-i" and facts["10.0.0.1"]["endpoint"] == "ep-eci"
    assert (
        facts["10.0.0.1"]["eni"].startswith("eni-") and facts["10.0.0.1"]["status"] == "Connected"
    )

    # Paging: nine endpoints in the VPC at two a page is five pages, all filtered by VPC.
    listed = [c for c in emu.calls if c.action == "ListVpcEndpoints"]
    assert len(listed) == 5
    assert all(c.params["VpcId"] == "vpc-test" and c.params["MaxResults"] == "2" for c in listed)
    assert all(c.params["RegionId"] == REGION for c in emu.calls)
    assert "NextToken" not in listed[0].params and all("NextToken" in c.params for c in listed[1:])
    # Zones only for usable, matched endpoints; five zones at two a page is three pages.
    zone_calls = [c.params["EndpointId"] for c in emu.calls if c.action == "ListVpcEndpointZones"]
    assert sorted(set(zone_calls)) == ["ep-acs", "ep-eci", "ep-ecs", "ep-tag", "ep-vpc"]
    assert zone_calls.count("ep-eci") == 3
    assert {c.status for c in emu.calls} == {200}

    # The rows `pldns sync --once` prints: unusable endpoints and zones are shown, not used.
    rows = {(r["service"], r["endpoint"], r["zone"]): r for r in source.rows}
    assert rows[("eci", "ep-eci-pending", "-")]["status"] == "Pending/Connected: not used"
    assert rows[("vpc", "ep-vpc-disconnected", "-")]["status"] == "Active/Disconnected: not used"
    assert rows[("eci", "ep-eci", f"{REGION}-j")]["status"] == "Disconnected"
    assert rows[("eci", "ep-eci", f"{REGION}-i")]["ip"] == "10.0.0.2 fd00::2"
    assert not any(r["endpoint"] == "ep-eci-other-vpc" for r in source.rows)


def test_changes_are_seen_on_the_next_fetch(emu: OpenApiEmulator) -> None:
    fleet(emu)
    source = make_source(emu)
    fetch(source)
    emu.set_zone("ep-eci", f"{REGION}-h", eni_ip="10.0.0.77")
    emu.set_zone("ep-eci", f"{REGION}-j", status="Connected")
    emu.set_endpoint("ep-vpc", status="Pending")
    emu.set_endpoint("ep-eci-pending", status="Active")
    result = fetch(source)
    assert ips(result, "eci")[0] == ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.77", "10.0.9.1"]
    assert ips(result, "vpc") == ([], [])  # known service, no usable endpoint: unknown


def test_one_endpoints_zones_failing_marks_its_service_incomplete(emu: OpenApiEmulator) -> None:
    fleet(emu)
    source = make_source(emu)
    # Zones are listed in endpoint id order: ep-acs first.
    emu.inject("5xx", count=1, action="ListVpcEndpointZones", code="InternalError")
    result = fetch(source)
    assert result.incomplete == {"acs"}
    assert set(result.errors) == {"ep-acs"}
    assert result.errors["ep-acs"].startswith("server: InternalError (HTTP 500) (request id ")
    assert ips(result, "eci")[0] == ["10.0.0.1", "10.0.0.2", "10.0.0.4"]  # others complete
    assert ips(result, "vpc") == (["10.0.1.1"], [])
    rows = [r for r in source.rows if r["endpoint"] == "ep-acs"]
    assert len(rows) == 1 and rows[0]["status"].startswith("zones failed: server: InternalError")


def test_503_on_zones_fails_the_whole_round(emu: OpenApiEmulator) -> None:
    """classify() counts ServiceUnavailable (503) as throttling, and a throttled zone call
    aborts the round (every later call would be throttled too): the table stays whole."""
    fleet(emu)
    source = make_source(emu)
    emu.inject("5xx", count=1, action="ListVpcEndpointZones")
    err = fetch_error(source)
    assert err.reason == "throttled" and "ServiceUnavailable (HTTP 503)" in str(err)
    assert emu.count("ListVpcEndpointZones") == 1  # stopped at the first throttled call


def test_throttling_carries_retry_after_in_seconds(emu: OpenApiEmulator) -> None:
    fleet(emu)
    source = make_source(emu)
    emu.inject("throttle", retry_after=1500)
    err = fetch_error(source)
    assert (err.reason, err.retry_after) == ("throttled", 1.5)
    assert REQUEST_ID.match(err.request_id) and "Throttling.User" in err.message
    # Throttled while listing zones: the whole round stops (no point calling on).
    emu.reset_calls()
    emu.inject("throttle", action="ListVpcEndpointZones", retry_after=800)
    err = fetch_error(source)
    assert (err.reason, err.retry_after) == ("throttled", 0.8)
    assert emu.count("ListVpcEndpointZones") == 1
    assert fetch(source).addresses["eci"].v4  # and it works once the fault is gone


def test_auth_error_with_request_id(emu: OpenApiEmulator) -> None:
    fleet(emu)
    emu.inject("auth")
    err = fetch_error(make_source(emu))
    assert err.reason == "auth" and err.message == "Forbidden.RAM (HTTP 403)"
    assert REQUEST_ID.match(err.request_id) and err.request_id in str(err)
    # Missing permission on the second action only: still auth, the whole round fails.
    emu.inject("auth", action="ListVpcEndpointZones", code="NoPermission")
    assert fetch_error(make_source(emu)).reason == "auth"


def test_bad_secret_and_unknown_key_are_auth(emu: OpenApiEmulator) -> None:
    fleet(emu)
    err = fetch_error(make_source(emu, access_key_secret="not-the-secret"))
    assert err.reason == "auth" and "SignatureDoesNotMatch" in str(err)
    assert "not-the-secret" not in str(err)
    err = fetch_error(make_source(emu, access_key_id="LTAIunknown0000"))
    assert err.reason == "auth" and "InvalidAccessKeyId.NotFound" in str(err)


def test_transport_errors(emu: OpenApiEmulator) -> None:
    fleet(emu)
    source = make_source(emu, read_timeout=500)
    emu.inject("reset")
    assert fetch_error(source).reason == "network"
    emu.inject("slow", delay=1.5)
    slow = make_source(emu, config=make_config(emu, read_timeout=0.5))
    assert fetch_error(slow).reason == "timeout"
    emu.stop()
    err = fetch_error(source)
    assert err.reason == "network" and "Cannot connect" in str(err)


def test_credentials_file_through_build_client(emu: OpenApiEmulator, tmp_path: Path) -> None:
    """No injected client: pldns builds the SDK client itself from `credentials.file`."""
    fleet(emu)
    good = tmp_path / "credentials.ini"
    good.write_text(
        "[pldns]\ntype = access_key\n"
        f"access_key_id = {TEST_ACCESS_KEY_ID}\naccess_key_secret = {TEST_ACCESS_KEY_SECRET}\n"
    )
    config = make_config(emu, credentials={"file": str(good), "profile": "pldns"})
    source = PrivateLinkSource(config.privatelink, config.region, config.services)
    assert ips(fetch(source), "vpc") == (["10.0.1.1"], [])
    bad = tmp_path / "bad.ini"
    bad.write_text(
        f"[default]\ntype = access_key\naccess_key_id = {TEST_ACCESS_KEY_ID}\n"
        "access_key_secret = wrong-secret-value\n"
    )
    config = make_config(emu, credentials={"file": str(bad)})
    source = PrivateLinkSource(config.privatelink, config.region, config.services)
    assert fetch_error(source).reason == "auth"
    # A credentials file that is not there: no request is made, and it is an auth problem.
    calls = emu.count()
    config = make_config(emu, credentials={"file": str(tmp_path / "missing.ini")})
    source = PrivateLinkSource(config.privatelink, config.region, config.services)
    err = fetch_error(source)
    assert err.reason == "auth" and "no usable credentials" in str(err)
    assert emu.count() == calls


def test_syncer_with_the_real_sdk(emu: OpenApiEmulator, tmp_path: Path) -> None:
    """Syncer + PrivateLinkSource + emulator: a change is published and persisted, a zone
    failure keeps that service's addresses, an outage keeps the table."""
    fleet(emu)
    config = make_config(emu)
    tables: list[RecordTable] = []
    snap = tmp_path / "snap.json"
    syncer = Syncer(config, make_source(emu, config), tables.append, [FileSink(str(snap))])
    syncer.start_static()

    def served(service: str) -> list[str]:
        return sorted(tables[-1].services[service].v4)

    assert asyncio.run(syncer.round())
    assert served("acs") == ["10.0.3.1"] and served("static") == ["192.168.0.1"]
    assert read(snap).services["eci"].v4
    emu.set_zone("ep-acs", "z", eni_ip="10.0.3.2")
    emu.set_zone("ep-vpc", "z", eni_ip="10.0.1.2")
    emu.inject("5xx", count=1, action="ListVpcEndpointZones", code="InternalError")  # ep-acs
    assert asyncio.run(syncer.round())
    assert served("acs") == ["10.0.3.1"] and served("vpc") == ["10.0.1.2"]
    assert set(syncer.state.partial) == {"ep-acs"}
    assert read(snap).services["vpc"].v4 == ("10.0.1.2",)
    assert asyncio.run(syncer.round())
    assert served("acs") == ["10.0.3.2"] and syncer.state.partial == {}
    emu.stop()
    count = len(tables)
    assert not asyncio.run(syncer.round())
    assert len(tables) == count and syncer.state.failures["network"] == 1
    assert served("acs") == ["10.0.3.2"]

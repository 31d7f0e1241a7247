"""The real Alibaba Cloud Python SDK against the local OpenAPI emulator (loopback only):
paging, filters, response shapes, state changes, PrivateZone, the standalone runner.
Faults, signatures and the emulator's lifecycle: ``test_emulator_faults.py``."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from alibabacloud_privatelink20200415 import models as pl
from alibabacloud_privatelink20200415.client import Client as PrivateLinkClient
from alibabacloud_pvtz20180101 import models as pz
from alibabacloud_pvtz20180101.client import Client as PvtzClient
from alibabacloud_tea_openapi.exceptions import ClientException
from darabonba.runtime import RuntimeOptions

from tests.emulator import OpenApiEmulator
from tests.emulator.sdk import sdk_config

REGION = "cn-hangzhou"
ECI = f"com.aliyuncs.privatelink.{REGION}.eci"
VPC = f"com.aliyuncs.privatelink.{REGION}.vpc"


@pytest.fixture
def emu():
    with OpenApiEmulator(region=REGION) as emulator:
        yield emulator


def pl_client(emu: OpenApiEmulator, **overrides) -> PrivateLinkClient:
    return PrivateLinkClient(sdk_config(emu, **overrides))


def add_fleet(emu: OpenApiEmulator, n: int = 7) -> None:
    for i in range(n):
        emu.add_endpoint(
            f"ep-{i:02d}",
            ECI if i % 2 == 0 else VPC,
            vpc_id="vpc-a" if i < 4 else "vpc-b",
            name=f"pldns-{i}",
            status="Active" if i != 3 else "Pending",
            tags={"team": "dns", "idx": str(i)} if i % 3 == 0 else {"team": "other"},
            zones=[
                {"zone_id": f"{REGION}-h", "eni_ip": f"10.0.{i}.1"},
                {"zone_id": f"{REGION}-k", "eni_ip": f"10.0.{i}.2", "ipv6": f"fd00::{i}:2"},
            ],
        )


def list_all_endpoints(client: PrivateLinkClient, **filters) -> tuple[list, int]:
    """The paging loop the sync will run, on the SDK's async API."""

    async def run() -> tuple[list, int]:
        found, token, pages = [], None, 0
        while True:
            req = pl.ListVpcEndpointsRequest(region_id=REGION, next_token=token, **filters)
            body = (await client.list_vpc_endpoints_async(req)).body
            pages += 1
            found.extend(body.endpoints)
            token = body.next_token
            if not token:
                return found, pages

    return asyncio.run(run())


def test_paging_across_pages_collects_everything(emu: OpenApiEmulator) -> None:
    add_fleet(emu, 7)
    client = pl_client(emu)
    endpoints, pages = list_all_endpoints(client, max_results=2)
    assert [e.endpoint_id for e in endpoints] == [f"ep-{i:02d}" for i in range(7)]
    assert pages == 4 and emu.count("ListVpcEndpoints") == 4
    assert all(c.params["MaxResults"] == "2" for c in emu.calls)
    assert "NextToken" not in emu.calls[0].params and emu.calls[1].params["NextToken"]
    ep = endpoints[0]
    assert ep.endpoint_status == "Active" and ep.connection_status == "Connected"
    assert ep.service_name == ECI and ep.endpoint_type == "Interface" and ep.vpc_id == "vpc-a"
    assert ep.endpoint_domain.startswith("ep-00.epsrv-")
    assert ep.endpoint_domain.endswith(f".{REGION}.privatelink.aliyuncs.com")
    assert {(t.key, t.value) for t in ep.tags} == {("team", "dns"), ("idx", "0")}


def test_zone_paging_with_options_async(emu: OpenApiEmulator) -> None:
    zones = [{"zone_id": f"{REGION}-{z}", "eni_ip": f"10.1.0.{n}"} for n, z in enumerate("abcde")]
    emu.add_endpoint("ep-z", ECI, zones=zones)
    emu.set_zone("ep-z", f"{REGION}-c", ipv6="fd00::c")
    client = pl_client(emu)

    async def run() -> list:
        out, token = [], None
        while True:
            req = pl.ListVpcEndpointZonesRequest(
                region_id=REGION, endpoint_id="ep-z", max_results=2, next_token=token
            )
            resp = await client.list_vpc_endpoint_zones_with_options_async(req, RuntimeOptions())
            assert resp.status_code == 200 and resp.body.request_id
            assert resp.body.total_count == 5
            out.extend(resp.body.zones)
            token = resp.body.next_token
            if not token:
                return out

    got = asyncio.run(run())
    assert [z.eni_ip for z in got] == [f"10.1.0.{n}" for n in range(5)]
    assert emu.count("ListVpcEndpointZones") == 3
    third = got[2]
    assert third.zone_ipv_6address == "fd00::c" and got[0].zone_ipv_6address is None
    assert third.zone_status == "Connected" and third.eni_id.startswith("eni-")
    assert third.v_switch_id.startswith("vsw-")
    assert third.zone_domain.startswith(f"ep-z-{REGION}-c.epsrv-")


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"vpc_id": "vpc-b"}, ["ep-04", "ep-05", "ep-06"]),
        ({"endpoint_id": "ep-02"}, ["ep-02"]),
        ({"endpoint_name": "pldns-5"}, ["ep-05"]),
        ({"endpoint_status": "Pending"}, ["ep-03"]),
        ({"service_name": VPC}, ["ep-01", "ep-03", "ep-05"]),
        ({"service_name": VPC, "vpc_id": "vpc-a"}, ["ep-01", "ep-03"]),
        (
            {"tag": [pl.ListVpcEndpointsRequestTag(key="team", value="dns")]},
            ["ep-00", "ep-03", "ep-06"],
        ),
        ({"tag": [pl.ListVpcEndpointsRequestTag(key="idx")]}, ["ep-00", "ep-03", "ep-06"]),
        (
            {
                "tag": [
                    pl.ListVpcEndpointsRequestTag(key="team", value="dns"),
                    pl.ListVpcEndpointsRequestTag(key="idx", value="6"),
                ]
            },
            ["ep-06"],
        ),
        ({"vpc_id": "vpc-nope"}, []),
    ],
)
def test_filters(emu: OpenApiEmulator, filters: dict, expected: list[str]) -> None:
    add_fleet(emu, 7)
    endpoints, _ = list_all_endpoints(pl_client(emu), **filters)
    assert [e.endpoint_id for e in endpoints] == expected


def test_tag_filter_wire_format(emu: OpenApiEmulator) -> None:
    add_fleet(emu, 1)
    tag = [pl.ListVpcEndpointsRequestTag(key="team", value="dns")]
    pl_client(emu).list_vpc_endpoints(pl.ListVpcEndpointsRequest(region_id=REGION, tag=tag))
    action, params, status = emu.calls[-1]
    assert (action, status) == ("ListVpcEndpoints", 200)
    assert params == {"RegionId": REGION, "Tag.1.Key": "team", "Tag.1.Value": "dns"}


def test_region_is_required_and_scopes_results(emu: OpenApiEmulator) -> None:
    add_fleet(emu, 2)
    client = pl_client(emu)
    with pytest.raises(ClientException) as info:  # Config.region_id does not fill RegionId
        client.list_vpc_endpoints(pl.ListVpcEndpointsRequest())
    assert (info.value.code, info.value.status_code) == ("MissingRegionId", 400)
    body = client.list_vpc_endpoints(pl.ListVpcEndpointsRequest(region_id="cn-beijing")).body
    assert body.endpoints == [] and body.total_count == 0 and not body.next_token
    with pytest.raises(ClientException) as info:
        client.list_vpc_endpoint_zones(pl.ListVpcEndpointZonesRequest(region_id=REGION))
    assert info.value.code == "MissingEndpointId"


def test_bad_next_token_and_unknown_endpoint(emu: OpenApiEmulator) -> None:
    add_fleet(emu, 1)
    client = pl_client(emu)
    with pytest.raises(ClientException) as info:
        client.list_vpc_endpoints(pl.ListVpcEndpointsRequest(region_id=REGION, next_token="bogus"))
    assert (info.value.code, info.value.status_code) == ("IllegalParam.NextToken", 400)
    with pytest.raises(ClientException) as info:
        client.list_vpc_endpoint_zones(
            pl.ListVpcEndpointZonesRequest(region_id=REGION, endpoint_id="ep-missing")
        )
    assert info.value.code == "EndpointNotFound"
    assert info.value.data["HostId"] == f"privatelink.{REGION}.aliyuncs.com"
    assert info.value.request_id == info.value.data["RequestId"]


def test_state_changes_between_calls_are_seen(emu: OpenApiEmulator) -> None:
    emu.add_endpoint("ep-1", ECI, zones=[{"zone_id": "a", "eni_ip": "10.0.0.1"}])
    client = pl_client(emu)
    zreq = pl.ListVpcEndpointZonesRequest(region_id=REGION, endpoint_id="ep-1")

    def ips() -> list[tuple[str, str]]:
        return [(z.eni_ip, z.zone_status) for z in client.list_vpc_endpoint_zones(zreq).body.zones]

    assert ips() == [("10.0.0.1", "Connected")]
    emu.set_zone("ep-1", "a", eni_ip="10.0.0.9", status="Disconnected")
    emu.add_zone("ep-1", zone_id="b", eni_ip="10.0.1.1")
    assert ips() == [("10.0.0.9", "Disconnected"), ("10.0.1.1", "Connected")]
    emu.remove_zone("ep-1", "a")
    assert ips() == [("10.0.1.1", "Connected")]
    emu.set_endpoint("ep-1", status="Deleting", connection="Disconnected")
    ep = client.list_vpc_endpoints(pl.ListVpcEndpointsRequest(region_id=REGION)).body.endpoints[0]
    assert (ep.endpoint_status, ep.connection_status) == ("Deleting", "Disconnected")
    emu.remove_endpoint("ep-1")
    assert (
        client.list_vpc_endpoints(pl.ListVpcEndpointsRequest(region_id=REGION)).body.endpoints == []
    )
    with pytest.raises(ClientException):
        ips()


def test_pvtz_zones_and_records(emu: OpenApiEmulator) -> None:
    records = [(f"host{i}", "A", f"10.2.0.{i}", 60) for i in range(5)] + [
        ("eci-vpc", "A", "10.2.1.1", 30)
    ]
    emu.add_pvtz_zone("zone-cp1", f"{REGION}.aliyuncs.com", vpcs=["vpc-a"], records=records)
    emu.add_pvtz_zone("zone-cp2", "privatelink.aliyuncs.com")
    emu.add_pvtz_zone("zone-auth", "corp.internal", zone_type="AUTH_ZONE")
    client = PvtzClient(sdk_config(emu))
    body = client.describe_zones(
        pz.DescribeZonesRequest(zone_type="CLOUD_PRODUCT_ZONE", page_size=1)
    ).body
    assert (body.total_items, body.total_pages, body.page_number, body.page_size) == (2, 2, 1, 1)
    assert [(z.zone_id, z.zone_type, z.record_count) for z in body.zones.zone] == [
        ("zone-cp1", "CLOUD_PRODUCT_ZONE", 6)
    ]
    page2 = client.describe_zones(
        pz.DescribeZonesRequest(zone_type="CLOUD_PRODUCT_ZONE", page_size=1, page_number=2)
    ).body
    assert [z.zone_name for z in page2.zones.zone] == ["privatelink.aliyuncs.com"]
    default = client.describe_zones(
        pz.DescribeZonesRequest()
    ).body  # ZoneType defaults to AUTH_ZONE
    assert [z.zone_id for z in default.zones.zone] == ["zone-auth"]
    by_vpc = client.describe_zones(
        pz.DescribeZonesRequest(zone_type="CLOUD_PRODUCT_ZONE", query_vpc_id="vpc-a")
    )
    assert [z.zone_id for z in by_vpc.body.zones.zone] == ["zone-cp1"]

    got, page = [], 1
    while True:
        req = pz.DescribeZoneRecordsRequest(zone_id="zone-cp1", page_size=4, page_number=page)
        rbody = asyncio.run(client.describe_zone_records_async(req)).body
        got.extend(rbody.records.record)
        if page >= rbody.total_pages:
            break
        page += 1
    assert page == 2 and len(got) == 6
    assert (got[-1].rr, got[-1].type, got[-1].value, got[-1].ttl) == (
        "eci-vpc",
        "A",
        "10.2.1.1",
        30,
    )
    exact = client.describe_zone_records(
        pz.DescribeZoneRecordsRequest(zone_id="zone-cp1", keyword="ECI-VPC")
    )
    assert [r.value for r in exact.body.records.record] == ["10.2.1.1"]
    with pytest.raises(ClientException) as info:
        client.describe_zone_records(pz.DescribeZoneRecordsRequest(zone_id="nope"))
    assert (info.value.code, info.value.data["HostId"]) == ("Zone.Invalid.Id", "pvtz.aliyuncs.com")
    assert emu.count("DescribeZones") == 4 and emu.count("DescribeZoneRecords") == 4


def test_concurrent_async_calls(emu: OpenApiEmulator) -> None:
    add_fleet(emu, 7)
    client = pl_client(emu)

    async def run() -> list:
        reqs = [
            pl.ListVpcEndpointZonesRequest(region_id=REGION, endpoint_id=f"ep-{i:02d}")
            for i in range(7)
        ]
        return await asyncio.gather(*(client.list_vpc_endpoint_zones_async(r) for r in reqs * 3))

    results = asyncio.run(run())
    assert [r.body.zones[0].eni_ip for r in results[:7]] == [f"10.0.{i}.1" for i in range(7)]
    assert emu.wait_for_calls(21, action="ListVpcEndpointZones", timeout=1)
    assert {c.status for c in emu.calls} == {200}


def test_standalone_main(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    state = tmp_path / "state.json"
    state.write_text(
        json.dumps(
            {
                "endpoints": [
                    {
                        "endpoint_id": "ep-demo",
                        "service_name": ECI,
                        "zones": [{"zone_id": "h", "eni_ip": "10.9.0.1"}],
                    }
                ],
                "pvtz_zones": [
                    {
                        "zone_id": "z",
                        "zone_name": "aliyuncs.com",
                        "records": [["eci", "A", "10.9.0.1", 60]],
                    }
                ],
            }
        )
    )
    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.emulator.openapi",
            "--port",
            str(port),
            "--state",
            str(state),
        ],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
        cfg = sdk_config(OpenApiEmulator(port=port))  # only its endpoint is used
        zreq = pl.ListVpcEndpointZonesRequest(region_id=REGION, endpoint_id="ep-demo")
        zones = PrivateLinkClient(cfg).list_vpc_endpoint_zones(zreq).body.zones
        assert [z.eni_ip for z in zones] == ["10.9.0.1"]
        recs = (
            PvtzClient(cfg).describe_zone_records(pz.DescribeZoneRecordsRequest(zone_id="z")).body
        )
        assert recs.records.record[0].rr == "eci"
    finally:
        proc.terminate()
        proc.wait(timeout=10)

"""`pldns discover`: what the VPC has (PrivateLink endpoints, PrivateZone cloud zones).

A setup aid: lists the VPC's endpoints with service names, zones and IPs, which configured
services each would feed, and the PrivateZone "cloud service" zones bound to the VPC with
their records, the quickest way to see which API host names to own.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from pldns.config import Config
from pldns.sync.privatelink import PrivateLinkSource, classify, quiet_sdk_logging, sdk_config
from pldns.sync.source import SourceError
from pldns.tabletext import format_table

PVTZ_HOST = "pvtz.aliyuncs.com"
CLOUD_PRODUCT_ZONE = "CLOUD_PRODUCT_ZONE"


def build_pvtz_client(config: Config) -> Any:
    """A PrivateZone client with the same credentials, protocol, proxy and timeouts."""
    from alibabacloud_pvtz20180101.client import Client

    quiet_sdk_logging()
    pl = config.privatelink
    return Client(sdk_config(pl, pl.region or config.region, pl.pvtz_endpoint or PVTZ_HOST))


async def list_cloud_zones(
    client: Any, vpc_id: str, region: str, host: str = PVTZ_HOST
) -> list[dict[str, Any]]:
    """CLOUD_PRODUCT_ZONE zones bound to the VPC, each with its records (paged)."""
    from alibabacloud_pvtz20180101 import models

    zones: list[dict[str, Any]] = []
    page = 1
    while True:
        req = models.DescribeZonesRequest(
            zone_type=CLOUD_PRODUCT_ZONE,
            query_vpc_id=vpc_id or None,
            query_region_id=region if vpc_id else None,
            page_number=page,
            page_size=100,
        )
        try:
            resp = await client.describe_zones_async(req)
        except Exception as err:
            raise classify(err, host) from err
        body = resp.body
        batch = (body.zones.zone if body.zones else None) or []
        for z in batch:
            zones.append({"id": z.zone_id, "name": z.zone_name, "records": []})
        if not batch or page >= (body.total_pages or 1):
            break
        page += 1
    for zone in zones:
        page = 1
        while True:
            rreq = models.DescribeZoneRecordsRequest(
                zone_id=zone["id"], page_number=page, page_size=100
            )
            try:
                rresp = await client.describe_zone_records_async(rreq)
            except Exception as err:
                raise classify(err, host) from err
            rbody = rresp.body
            records = (rbody.records.record if rbody.records else None) or []
            for r in records:
                zone["records"].append((r.rr or "@", r.type or "", r.value or "", str(r.ttl or "")))
            if not records or page >= (rbody.total_pages or 1):
                break
            page += 1
    return zones


async def run_discover(
    config: Config,
    source: PrivateLinkSource | None = None,
    pvtz: Any = None,
    out: TextIO = sys.stdout,
) -> int:
    source = source or PrivateLinkSource(config.privatelink, config.region, config.services)
    vpc = config.privatelink.vpc_id or "(all VPCs)"
    try:
        endpoints = await source.list_endpoints()
    except SourceError as err:
        print(f"ListVpcEndpoints failed: {err}", file=sys.stderr)
        return 1
    rows = []
    for ep in sorted(endpoints, key=lambda e: e.endpoint_id):
        feeds = [s.name for s in config.services if s.matcher is not None and ep.matches(s.matcher)]
        try:
            zones = await source.list_zones(ep.endpoint_id)
        except SourceError as err:
            rows.append([ep.endpoint_id, ep.service_name, "-", "-", f"zones failed: {err}", "-"])
            continue
        status = f"{ep.status}/{ep.connection}"
        for zone in zones or [None]:  # type: ignore[list-item]
            zone_id = zone.zone_id if zone else "-"
            ips = " ".join(x for x in (zone.eni_ip, zone.ipv6) if x) if zone else "-"
            zstatus = f"{status} zone {zone.status}" if zone else status
            rows.append(
                [ep.endpoint_id, ep.service_name, zone_id, ips, zstatus, ",".join(feeds) or "-"]
            )
    print(f"PrivateLink endpoints in {vpc} ({source.region}):", file=out)
    headers = ("endpoint", "service name", "zone", "ip", "status", "feeds")
    print(format_table(headers, rows) if rows else "  none", file=out)
    pvtz_host = config.privatelink.pvtz_endpoint or PVTZ_HOST
    try:
        client = pvtz or build_pvtz_client(config)
        cloud_zones = await list_cloud_zones(
            client, config.privatelink.vpc_id, source.region, pvtz_host
        )
    except SourceError as err:
        # Half an answer is a failure: a script must not take it for the whole picture.
        print(f"PrivateZone DescribeZones failed: {err}", file=sys.stderr)
        return 1
    print(f"\nPrivateZone cloud-service zones bound to {vpc}:", file=out)
    if not cloud_zones:
        print("  none", file=out)
    for cz in cloud_zones:
        print(f"  {cz['name']} ({cz['id']})", file=out)
        for rr, rtype, value, ttl in cz["records"]:
            name = cz["name"] if rr == "@" else f"{rr}.{cz['name']}"
            print(f"    {name}  {ttl}  {rtype}  {value}", file=out)
    return 0

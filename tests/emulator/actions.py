"""The emulated API actions: request parameters in, response body dict out (or ApiError).

Response shapes follow the SDK's response models (``ListVpcEndpointsResponseBody`` etc.),
which mirror the real API. Error codes: see the module docstring of ``openapi.py``.
"""

from __future__ import annotations

import re
import secrets
import threading
from collections.abc import Callable, Mapping
from typing import Any

from .signature import ApiError
from .state import CREATE_TIME, CREATE_TIMESTAMP_MS, CloudState, Endpoint, PvtzZone

PRIVATELINK_VERSION = "2020-04-15"
PVTZ_VERSION = "2018-01-01"
_TAG_KEY = re.compile(r"^Tag\.(\d+)\.(Key|Value)$")


def _required(params: Mapping[str, str], name: str) -> str:
    value = params.get(name, "")
    if value == "":
        raise ApiError(400, f"Missing{name}", f"{name} is mandatory for this action.")
    return value


def _int_param(
    params: Mapping[str, str], name: str, default: int, low: int, high: int, code: str
) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ApiError(400, code, f"The specified {name} is invalid.")
    return value


class Actions:
    """Dispatch table plus the opaque NextToken registry (tokens survive restart())."""

    def __init__(self, state: CloudState) -> None:
        self.state = state
        self._tokens: dict[str, tuple[str, int]] = {}
        self._tokens_lock = threading.Lock()
        self.table: dict[tuple[str, str], Callable[[Mapping[str, str]], dict[str, Any]]] = {
            ("ListVpcEndpoints", PRIVATELINK_VERSION): self.list_vpc_endpoints,
            ("ListVpcEndpointZones", PRIVATELINK_VERSION): self.list_vpc_endpoint_zones,
            ("DescribeZones", PVTZ_VERSION): self.describe_zones,
            ("DescribeZoneRecords", PVTZ_VERSION): self.describe_zone_records,
        }

    # ---- paging ------------------------------------------------------------------
    def _page(
        self, scope: str, items: list[Any], params: Mapping[str, str]
    ) -> tuple[list[Any], str, int]:
        size = _int_param(params, "MaxResults", 50, 1, 1000, "IllegalParam.MaxResults")
        token = params.get("NextToken", "")
        start = 0
        if token:
            with self._tokens_lock:
                found = self._tokens.get(token)
            if found is None or found[0] != scope:
                raise ApiError(400, "IllegalParam.NextToken", "The specified NextToken is invalid.")
            start = found[1]
        page = items[start : start + size]
        next_token = ""
        if start + size < len(items):
            next_token = secrets.token_hex(16)
            with self._tokens_lock:
                self._tokens[next_token] = (scope, start + size)
        return page, next_token, size

    # ---- PrivateLink -------------------------------------------------------------
    def list_vpc_endpoints(self, params: Mapping[str, str]) -> dict[str, Any]:
        region = _required(params, "RegionId")
        wanted_tags = _tag_filters(params)
        filters = {
            "VpcId": lambda e: e.vpc_id,
            "EndpointId": lambda e: e.endpoint_id,
            "EndpointName": lambda e: e.name,
            "EndpointStatus": lambda e: e.status,
            "ConnectionStatus": lambda e: e.connection,
            "ServiceName": lambda e: e.service_name,
            "EndpointType": lambda e: e.endpoint_type,
            "AddressIpVersion": lambda e: e.address_ip_version,
            "ResourceGroupId": lambda e: e.resource_group_id,
        }
        matched = []
        for ep in self.state.endpoints():
            if ep.region_id != region:
                continue
            if any(params.get(k) and get(ep) != params[k] for k, get in filters.items()):
                continue
            if not all(k in ep.tags and (v is None or ep.tags[k] == v) for k, v in wanted_tags):
                continue
            matched.append(ep)
        page, next_token, size = self._page(f"ListVpcEndpoints|{region}", matched, params)
        return {
            "Endpoints": [_endpoint_body(ep) for ep in page],
            "NextToken": next_token,
            "MaxResults": size,
            "TotalCount": len(matched),
        }

    def list_vpc_endpoint_zones(self, params: Mapping[str, str]) -> dict[str, Any]:
        region = _required(params, "RegionId")
        endpoint_id = _required(params, "EndpointId")
        ep = next(
            (
                e
                for e in self.state.endpoints()
                if e.endpoint_id == endpoint_id and e.region_id == region
            ),
            None,
        )
        if ep is None:
            # Code as handled for this action by aliyun/terraform-provider-alicloud
            # (service_alicloud_privatelink.go); HTTP 400 like PrivateLink's other errors.
            raise ApiError(400, "EndpointNotFound", "The specified endpoint is not found.")
        page, next_token, size = self._page(
            f"ListVpcEndpointZones|{region}|{endpoint_id}", ep.zones, params
        )
        zones = []
        for z in page:
            body = {
                "ZoneId": z.zone_id,
                "ZoneStatus": z.status,
                "EniId": z.eni_id,
                "EniIp": z.eni_ip,
                "ZoneIpv6Address": z.ipv6,
                "VSwitchId": z.vswitch_id,
                "ZoneDomain": ep.zone_domain(z),
                "RegionId": ep.region_id,
            }
            zones.append({k: v for k, v in body.items() if v is not None})
        return {
            "Zones": zones,
            "NextToken": next_token,
            "MaxResults": size,
            "TotalCount": len(ep.zones),
        }

    # ---- PrivateZone -------------------------------------------------------------
    def _pvtz_page(
        self, items: list[Any], params: Mapping[str, str]
    ) -> tuple[list[Any], dict[str, int]]:
        number = _int_param(params, "PageNumber", 1, 1, 10**9, "InvalidPageNumber")
        size = _int_param(params, "PageSize", 20, 1, 100, "InvalidPageSize")
        start = (number - 1) * size
        meta = {
            "PageNumber": number,
            "PageSize": size,
            "TotalItems": len(items),
            "TotalPages": (len(items) + size - 1) // size,
        }
        return items[start : start + size], meta

    def describe_zones(self, params: Mapping[str, str]) -> dict[str, Any]:
        zone_type = params.get("ZoneType") or "AUTH_ZONE"
        keyword = params.get("Keyword", "").lower()
        exact = params.get("SearchMode", "LIKE").upper() == "EXACT"
        vpc, vpc_region = params.get("QueryVpcId"), params.get("QueryRegionId")
        matched = [
            z
            for z in self.state.pvtz_zones()
            if z.zone_type == zone_type
            and (
                not keyword
                or (z.zone_name.lower() == keyword if exact else keyword in z.zone_name.lower())
            )
            and (not vpc or any(v == vpc for v, _ in z.vpcs))
            and (not vpc_region or any(r == vpc_region for _, r in z.vpcs))
        ]
        page, meta = self._pvtz_page(matched, params)
        return {**meta, "Zones": {"Zone": [_pvtz_zone_body(z) for z in page]}}

    def describe_zone_records(self, params: Mapping[str, str]) -> dict[str, Any]:
        zone_id = _required(params, "ZoneId")
        keyword = params.get("Keyword", "").lower()
        like = params.get("SearchMode", "EXACT").upper() == "LIKE"
        zone = next((z for z in self.state.pvtz_zones() if z.zone_id == zone_id), None)
        if zone is None:
            # pvtz documents 400 Zone.Invalid.Id "Zone id is invalid." for a bad ZoneId.
            raise ApiError(400, "Zone.Invalid.Id", "Zone id is invalid.")
        records = [
            r
            for r in zone.records
            if not keyword or (keyword in r.rr.lower() if like else r.rr.lower() == keyword)
        ]
        page, meta = self._pvtz_page(records, params)
        body = [
            {
                "RecordId": r.record_id,
                "Rr": r.rr,
                "Type": r.type,
                "Value": r.value,
                "Ttl": r.ttl,
                "Priority": r.priority,
                "Status": r.status,
                "Line": r.line,
                "Weight": r.weight,
                "Remark": r.remark,
                "ZoneId": zone.zone_id,
                "CreateTime": CREATE_TIME,
                "CreateTimestamp": CREATE_TIMESTAMP_MS,
                "UpdateTime": CREATE_TIME,
                "UpdateTimestamp": CREATE_TIMESTAMP_MS,
            }
            for r in page
        ]
        return {
            **meta,
            "Records": {"Record": [{k: v for k, v in b.items() if v is not None} for b in body]},
        }


def _tag_filters(params: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """``Tag.N.Key`` / ``Tag.N.Value`` (how the SDK flattens ``request.tag``) -> pairs."""
    by_index: dict[int, dict[str, str]] = {}
    for key, value in params.items():
        m = _TAG_KEY.match(key)
        if m:
            by_index.setdefault(int(m.group(1)), {})[m.group(2)] = value
    return [(t["Key"], t.get("Value")) for _, t in sorted(by_index.items()) if t.get("Key")]


def _endpoint_body(ep: Endpoint) -> dict[str, Any]:
    return {
        "EndpointId": ep.endpoint_id,
        "EndpointName": ep.name,
        "EndpointDescription": ep.description,
        "EndpointDomain": ep.domain,
        "EndpointType": ep.endpoint_type,
        "EndpointStatus": ep.status,
        "EndpointBusinessStatus": "Normal",
        "ConnectionStatus": ep.connection,
        "ServiceId": ep.effective_service_id,
        "ServiceName": ep.service_name,
        "ServiceRegionId": ep.region_id,
        "VpcId": ep.vpc_id,
        "RegionId": ep.region_id,
        "ResourceGroupId": ep.resource_group_id,
        "ResourceOwner": True,
        "ZoneAffinityEnabled": ep.zone_affinity_enabled,
        "AddressIpVersion": ep.address_ip_version,
        "Bandwidth": ep.bandwidth,
        "CreateTime": CREATE_TIME,
        "ProtectedEnabled": False,
        "Tags": [{"Key": k, "Value": v} for k, v in ep.tags.items()],
    }


def _pvtz_zone_body(z: PvtzZone) -> dict[str, Any]:
    return {
        "ZoneId": z.zone_id,
        "ZoneName": z.zone_name,
        "ZoneType": z.zone_type,
        "RecordCount": len(z.records),
        "IsPtr": z.is_ptr,
        "ProxyPattern": "ZONE",
        "Remark": z.remark,
        "ResourceGroupId": z.resource_group_id,
        "ResourceTags": {"ResourceTag": []},
        "DnsGroup": "NORMAL_ZONE",
        "DnsGroupChanging": False,
        "CreateTime": CREATE_TIME,
        "CreateTimestamp": CREATE_TIMESTAMP_MS,
        "UpdateTime": CREATE_TIME,
        "UpdateTimestamp": CREATE_TIMESTAMP_MS,
    }

"""The emulated cloud's resources (PrivateLink endpoints and zones, PrivateZone zones and
records), and the thread-safe methods tests use to change them between API calls."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

CREATE_TIME = "2024-05-20T08:00:00Z"
CREATE_TIMESTAMP_MS = 1716192000000


def short_hash(*parts: str, length: int = 16) -> str:
    return hashlib.sha1("/".join(parts).encode()).hexdigest()[:length]


@dataclass
class EndpointZone:
    """One zone of an interface endpoint: the ENI whose IP pldns serves."""

    zone_id: str
    eni_ip: str | None = None
    eni_id: str | None = None
    ipv6: str | None = None
    status: str = "Connected"
    vswitch_id: str | None = None
    zone_domain: str | None = None


Zone = EndpointZone  # the name the brief uses


@dataclass
class Endpoint:
    endpoint_id: str
    service_name: str
    vpc_id: str = "vpc-test"
    name: str | None = None
    status: str = "Active"
    connection: str = "Connected"
    tags: dict[str, str] = field(default_factory=dict)
    zones: list[EndpointZone] = field(default_factory=list)
    region_id: str = "cn-hangzhou"
    endpoint_type: str = "Interface"
    service_id: str | None = None
    endpoint_domain: str | None = None
    address_ip_version: str = "IPv4"
    zone_affinity_enabled: bool = False
    resource_group_id: str = "rg-acfmtest0000000"
    description: str = ""
    bandwidth: int = 3072

    @property
    def effective_service_id(self) -> str:
        return self.service_id or f"epsrv-{short_hash(self.service_name, length=20)}"

    @property
    def domain(self) -> str:
        return self.endpoint_domain or (
            f"{self.endpoint_id}.{self.effective_service_id}.{self.region_id}.privatelink.aliyuncs.com"
        )

    def zone_domain(self, zone: EndpointZone) -> str:
        return zone.zone_domain or (
            f"{self.endpoint_id}-{zone.zone_id}.{self.effective_service_id}."
            f"{self.region_id}.privatelink.aliyuncs.com"
        )


@dataclass
class PvtzRecord:
    rr: str
    type: str
    value: str
    ttl: int = 60
    record_id: int = 0
    priority: int | None = None
    status: str = "ENABLE"
    line: str = "default"
    weight: int = 1
    remark: str = ""


@dataclass
class PvtzZone:
    zone_id: str
    zone_name: str
    zone_type: str = "CLOUD_PRODUCT_ZONE"
    vpcs: list[tuple[str, str]] = field(default_factory=list)  # (vpc_id, region_id)
    records: list[PvtzRecord] = field(default_factory=list)
    remark: str = ""
    is_ptr: bool = False
    resource_group_id: str = "rg-acfmtest0000000"


_ENDPOINT_FIELDS = frozenset(f.name for f in dataclasses.fields(Endpoint))
_ZONE_FIELDS = frozenset(f.name for f in dataclasses.fields(EndpointZone))


def _zone_of(value: EndpointZone | Mapping[str, Any]) -> EndpointZone:
    if isinstance(value, EndpointZone):
        return dataclasses.replace(value)
    return EndpointZone(**dict(value))


def _tags_of(tags: Mapping[str, str] | Iterable[Any] | None) -> dict[str, str]:
    if tags is None:
        return {}
    if isinstance(tags, Mapping):
        return {str(k): str(v) for k, v in tags.items()}
    out: dict[str, str] = {}
    for item in tags:
        if isinstance(item, Mapping):
            out[str(item.get("Key", item.get("key")))] = str(
                item.get("Value", item.get("value", ""))
            )
        else:
            out[str(item[0])] = str(item[1])
    return out


def _record_of(value: PvtzRecord | Mapping[str, Any] | tuple) -> PvtzRecord:
    if isinstance(value, PvtzRecord):
        return dataclasses.replace(value)
    if isinstance(value, Mapping):
        return PvtzRecord(**dict(value))
    return PvtzRecord(*value)


def _vpc_of(value: str | Mapping[str, str] | tuple, region: str) -> tuple[str, str]:
    if isinstance(value, str):
        return (value, region)
    if isinstance(value, Mapping):
        return (value["vpc_id"], value.get("region_id", region))
    return (value[0], value[1])


class CloudState:
    """Mutable cloud resources guarded by one lock; the HTTP handlers read under the same lock."""

    def __init__(self, region: str = "cn-hangzhou") -> None:
        self.region = region
        self._lock = threading.RLock()
        self._endpoints: dict[str, Endpoint] = {}
        self._pvtz: dict[str, PvtzZone] = {}
        self._next_record_id = 100000

    # ---- PrivateLink endpoints -------------------------------------------------------
    def add_endpoint(
        self,
        endpoint_id: str,
        service_name: str,
        vpc_id: str = "vpc-test",
        name: str | None = None,
        status: str = "Active",
        connection: str = "Connected",
        tags: Mapping[str, str] | Iterable[Any] | None = None,
        zones: Iterable[EndpointZone | Mapping[str, Any]] | None = None,
        **extra: Any,
    ) -> Endpoint:
        """Add (or replace) an endpoint. ``extra``: any other :class:`Endpoint` field."""
        extra.setdefault("region_id", self.region)
        ep = Endpoint(
            endpoint_id=endpoint_id,
            service_name=service_name,
            vpc_id=vpc_id,
            name=name if name is not None else endpoint_id,
            status=status,
            connection=connection,
            tags=_tags_of(tags),
            zones=[self._fill_zone(endpoint_id, _zone_of(z)) for z in (zones or [])],
            **extra,
        )
        with self._lock:
            self._endpoints[endpoint_id] = ep
        return ep

    def remove_endpoint(self, endpoint_id: str) -> None:
        with self._lock:
            del self._endpoints[endpoint_id]

    def set_endpoint(self, endpoint_id: str, **changes: Any) -> None:
        """Change endpoint fields, e.g. ``status="Pending"``, ``connection="Disconnected"``."""
        with self._lock:
            ep = self._endpoints[endpoint_id]
            for key, value in changes.items():
                if key == "tags":
                    value = _tags_of(value)
                elif key == "zones":
                    value = [self._fill_zone(endpoint_id, _zone_of(z)) for z in value]
                elif key not in _ENDPOINT_FIELDS:
                    raise TypeError(f"unknown endpoint field {key!r}")
                setattr(ep, key, value)

    def add_zone(
        self, endpoint_id: str, zone: EndpointZone | Mapping[str, Any] | None = None, **fields: Any
    ) -> EndpointZone:
        """``add_zone("ep-1", zone_id="cn-hangzhou-k", eni_ip="10.0.0.9")`` or pass a zone."""
        z = self._fill_zone(
            endpoint_id, _zone_of(zone) if zone is not None else EndpointZone(**fields)
        )
        with self._lock:
            ep = self._endpoints[endpoint_id]
            ep.zones = [old for old in ep.zones if old.zone_id != z.zone_id] + [z]
        return z

    def remove_zone(self, endpoint_id: str, zone_id: str) -> None:
        with self._lock:
            ep = self._endpoints[endpoint_id]
            kept = [z for z in ep.zones if z.zone_id != zone_id]
            if len(kept) == len(ep.zones):
                raise KeyError(zone_id)
            ep.zones = kept

    def set_zone(self, endpoint_id: str, zone_id: str, **changes: Any) -> None:
        """Change zone fields, e.g. ``eni_ip="10.0.0.7"``, ``status="Disconnected"``."""
        with self._lock:
            for z in self._endpoints[endpoint_id].zones:
                if z.zone_id == zone_id:
                    for key, value in changes.items():
                        if key not in _ZONE_FIELDS:
                            raise TypeError(f"unknown zone field {key!r}")
                        setattr(z, key, value)
                    return
            raise KeyError(zone_id)

    def endpoints(self) -> list[Endpoint]:
        """A deep copy of the endpoints, in insertion order."""
        with self._lock:
            return [
                dataclasses.replace(e, zones=[dataclasses.replace(z) for z in e.zones])
                for e in self._endpoints.values()
            ]

    @staticmethod
    def _fill_zone(endpoint_id: str, z: EndpointZone) -> EndpointZone:
        if z.eni_id is None:
            z.eni_id = f"eni-{short_hash(endpoint_id, z.zone_id, length=20)}"
        if z.vswitch_id is None:
            z.vswitch_id = f"vsw-{short_hash(z.zone_id, length=20)}"
        return z

    # ---- PrivateZone -----------------------------------------------------------------
    def add_pvtz_zone(
        self,
        zone_id: str,
        zone_name: str,
        zone_type: str = "CLOUD_PRODUCT_ZONE",
        vpcs: Iterable[str | Mapping[str, str] | tuple] | None = None,
        records: Iterable[PvtzRecord | Mapping[str, Any] | tuple] | None = None,
        **extra: Any,
    ) -> PvtzZone:
        """``records``: ``(rr, type, value, ttl)`` tuples, dicts or :class:`PvtzRecord`."""
        zone = PvtzZone(
            zone_id=zone_id,
            zone_name=zone_name,
            zone_type=zone_type,
            vpcs=[_vpc_of(v, self.region) for v in (vpcs or [])],
            **extra,
        )
        with self._lock:
            zone.records = [self._number(_record_of(r)) for r in (records or [])]
            self._pvtz[zone_id] = zone
        return zone

    def pvtz_zones(self) -> list[PvtzZone]:
        """A deep copy of the PrivateZone zones, in insertion order."""
        with self._lock:
            return [
                dataclasses.replace(
                    z, vpcs=list(z.vpcs), records=[dataclasses.replace(r) for r in z.records]
                )
                for z in self._pvtz.values()
            ]

    def remove_pvtz_zone(self, zone_id: str) -> None:
        with self._lock:
            del self._pvtz[zone_id]

    def set_pvtz_records(
        self, zone_id: str, records: Iterable[PvtzRecord | Mapping[str, Any] | tuple]
    ) -> None:
        with self._lock:
            self._pvtz[zone_id].records = [self._number(_record_of(r)) for r in records]

    def _number(self, record: PvtzRecord) -> PvtzRecord:
        if not record.record_id:
            self._next_record_id += 1
            record.record_id = self._next_record_id
        return record

    # ---- whole-state load/dump (the ``--state`` JSON file) ---------------------------
    def load_state(self, data: Mapping[str, Any] | list) -> None:
        """Replace everything. ``data``: a list of endpoints, or
        ``{"region": ..., "endpoints": [...], "pvtz_zones": [...]}``; each endpoint is the
        keyword arguments of :meth:`add_endpoint`, each pvtz zone those of :meth:`add_pvtz_zone`."""
        if isinstance(data, list):
            data = {"endpoints": data}
        with self._lock:
            self.region = data.get("region", self.region)
            self._endpoints.clear()
            self._pvtz.clear()
            for ep in data.get("endpoints", []):
                self.add_endpoint(**ep)
            for zone in data.get("pvtz_zones", []):
                self.add_pvtz_zone(**zone)

    def dump_state(self) -> dict[str, Any]:
        with self._lock:
            return {
                "region": self.region,
                "endpoints": [dataclasses.asdict(e) for e in self._endpoints.values()],
                "pvtz_zones": [dataclasses.asdict(z) for z in self._pvtz.values()],
            }

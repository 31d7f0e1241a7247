"""The PrivateLink source: endpoint ENI IPs from the Alibaba Cloud API, via the real SDK.

The only module that speaks cloud vocabulary. One round: ListVpcEndpoints for the VPC
(paged), match endpoints to services, ListVpcEndpointZones for each matched endpoint (paged).
A usable IP is an endpoint that is Active and Connected with a zone that is Connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pldns.config.dns import Service
from pldns.config.sync import Matcher, PrivateLink
from pldns.dns.table import Addresses
from pldns.sync.cloudenv import metadata_allowed
from pldns.sync.source import SourceError, SourceResult

log = logging.getLogger("pldns.privatelink")

ENDPOINT_ACTIVE = "Active"
CONNECTION_CONNECTED = "Connected"
ZONE_CONNECTED = "Connected"
THROTTLING_CODES = ("Throttling", "Throttling.User", "Throttling.Api", "ServiceUnavailable")
AUTH_CODE_PREFIXES = (
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "Forbidden",
    "NoPermission",
    "InvalidSecurityToken",
    "IncompleteSignature",
    "UnauthorizedOperation",
)


@dataclass(frozen=True)
class Zone:
    zone_id: str
    status: str
    eni_id: str
    eni_ip: str
    ipv6: str
    vswitch_id: str

    @property
    def usable(self) -> bool:
        return self.status == ZONE_CONNECTED


@dataclass(frozen=True)
class Endpoint:
    endpoint_id: str
    name: str
    service_name: str
    status: str
    connection: str
    vpc_id: str
    tags: tuple[tuple[str, str], ...]
    domain: str = ""

    @property
    def usable(self) -> bool:
        return self.status == ENDPOINT_ACTIVE and self.connection == CONNECTION_CONNECTED

    def matches(self, m: Matcher) -> bool:
        return (
            (not m.service_name or self.service_name == m.service_name)
            and (not m.endpoint_id or self.endpoint_id == m.endpoint_id)
            and (not m.endpoint_name or self.name == m.endpoint_name)
            and all(tag in self.tags for tag in m.tags)
        )


NO_CREDENTIALS = "no credentials found"
NO_CREDENTIALS_HINT = (
    "set ALIBABA_CLOUD_ACCESS_KEY_ID and ALIBABA_CLOUD_ACCESS_KEY_SECRET, a credentials file "
    "(privatelink.credentials.file), or run on ECS/ACK with a RAM role"
)
_TEXT_MAX = 240


def one_line(text: str, limit: int = _TEXT_MAX) -> str:
    """Whitespace collapsed to one line; past `limit`, cut at a word boundary with an ellipsis."""
    flat = " ".join(str(text).split())
    if len(flat) <= limit:
        return flat
    cut = flat[: limit + 1].rsplit(" ", 1)[0] if " " in flat[:limit] else flat[:limit]
    return cut.rstrip(" ,;:") + " …"


def _auth_hint(code: str) -> str:
    if code.startswith("InvalidAccessKeyId"):
        return "check the AccessKey ID (ALIBABA_CLOUD_ACCESS_KEY_ID or the credentials file)"
    if code.startswith("SignatureDoesNotMatch") or code.startswith("IncompleteSignature"):
        return (
            "the AccessKey secret does not match its ID: check ALIBABA_CLOUD_ACCESS_KEY_SECRET "
            "or the credentials file"
        )
    if code.startswith("InvalidSecurityToken"):
        return "the STS token is invalid or expired: renew ALIBABA_CLOUD_SECURITY_TOKEN"
    return (
        "grant the RAM identity privatelink:ListVpcEndpoints and "
        "privatelink:ListVpcEndpointZones (pvtz:DescribeZones and pvtz:DescribeZoneRecords "
        "for discover)"
    )


def _credentials_problem(detail: str) -> tuple[str, str]:
    """(what is wrong, what to do) when the credentials chain found nothing usable."""
    if "providers in the chain" not in detail:  # a configured file or profile is wrong
        return (
            f"no usable credentials: {one_line(detail, 160)}",
            "check privatelink.credentials.file and privatelink.credentials.profile",
        )
    if metadata_allowed()[0]:
        return NO_CREDENTIALS, (
            f"{NO_CREDENTIALS_HINT} (the ECS metadata service gave none; outside Alibaba Cloud "
            "set ALIBABA_CLOUD_ECS_METADATA_DISABLED=true)"
        )
    return NO_CREDENTIALS, NO_CREDENTIALS_HINT


def classify(err: BaseException, host: str = "") -> SourceError:
    """Map an SDK or transport error to a SourceError with a bounded reason label, and a
    one-line message that ends with what to do."""
    if isinstance(err, SourceError):
        return err
    code = str(getattr(err, "code", "") or "")
    status = getattr(err, "status_code", None) or getattr(err, "statusCode", None)
    request_id = str(getattr(err, "request_id", "") or "")
    retry_after = getattr(err, "retry_after", None)
    name = type(err).__name__
    where = host or "the API endpoint"
    if name == "ThrottlingException" or code in THROTTLING_CODES or status == 503:
        wait = float(retry_after) / 1000.0 if retry_after else None  # header is milliseconds
        return SourceError(
            "throttled", f"{code or 'Throttling'} (HTTP {status})", request_id, wait, code=code,
            hint="the API is busy or throttling: pldns retries with backoff; "
            "raise sync.interval if this persists",
        )  # fmt: skip
    if code.startswith(AUTH_CODE_PREFIXES) or status in (401, 403):
        return SourceError(
            "auth", f"{code} (HTTP {status})", request_id, code=code, hint=_auth_hint(code)
        )
    if status is not None and int(status) >= 500:
        return SourceError(
            "server", f"{code} (HTTP {status})", request_id, code=code,
            hint="an Alibaba Cloud API error: pldns retries; if it persists, "
            "contact support with the request id",
        )  # fmt: skip
    if status is not None:
        return SourceError(
            "client", f"{code} (HTTP {status})", request_id, code=code,
            hint="check region, privatelink.region and privatelink.vpc_id",
        )  # fmt: skip
    text = str(err)
    # No usable credentials (empty chain, unreadable credentials file): the SDK wraps the
    # credentials package's error in UnretryableException. It is not a network problem.
    inner = getattr(err, "inner_exception", None)
    filename = getattr(inner, "filename", None)
    if (
        "CredentialException" in (name, type(inner).__name__)
        or filename
        or re.search(r"access key (id|secret) is empty", text)
    ):
        detail = str(inner) if inner is not None else text
        if filename:
            detail = f"credentials file {filename}: {getattr(inner, 'strerror', '') or inner}"
        problem, hint = _credentials_problem(detail)
        return SourceError("auth", problem, code="credentials", hint=hint)
    if isinstance(err, TimeoutError) or "timeout" in (name + text).lower() or "timed out" in text:
        return SourceError(
            "timeout", f"{name}: {one_line(text)}", code=name,
            hint=f"no answer from {where}: check the route to it (Express Connect), "
            "privatelink.https_proxy, or raise privatelink.connect_timeout/read_timeout",
        )  # fmt: skip
    return SourceError(
        "network", f"{name}: {one_line(text)}", code=name,
        hint=f"cannot reach {where}: check that it resolves and is routed from here, "
        "privatelink.endpoint and privatelink.https_proxy",
    )  # fmt: skip


class PrivateLinkSource:
    """Fetches addresses for the services that have a PrivateLink matcher."""

    kind = "privatelink"

    def __init__(
        self, settings: PrivateLink, region: str, services: Sequence[Service], client: Any = None
    ) -> None:
        self.settings = settings
        self.region = settings.region or region
        self.services = [s for s in services if s.matcher is not None and not s.static]
        self._client = client
        # Every endpoint/zone the last round saw, usable or not, for `pldns sync --once`.
        self.rows: list[dict[str, str]] = []

    def client(self) -> Any:
        if self._client is None:
            self._client = build_client(self.settings, self.region)
        return self._client

    def _runtime(self) -> Any:
        from darabonba.runtime import RuntimeOptions

        return RuntimeOptions(
            autoretry=False,  # retries and backoff are the sync loop's job
            connect_timeout=int(self.settings.connect_timeout * 1000),
            read_timeout=int(self.settings.read_timeout * 1000),
        )

    async def _pages(self, call: Any, request_for: Callable[[str | None], Any]) -> list[Any]:
        """Every page's body of a NextToken-paged call (an empty or missing token ends it)."""
        bodies = []
        token: str | None = None
        while True:
            try:
                resp = await call(request_for(token), self._runtime())
            except Exception as err:
                raise classify(err, api_host(self.settings, self.region)) from err
            bodies.append(resp.body)
            token = resp.body.next_token
            if not token:
                return bodies

    async def list_endpoints(self) -> list[Endpoint]:
        from alibabacloud_privatelink20200415 import models

        bodies = await self._pages(
            self.client().list_vpc_endpoints_with_options_async,
            lambda token: models.ListVpcEndpointsRequest(
                region_id=self.region,
                vpc_id=self.settings.vpc_id or None,
                max_results=self.settings.page_size,
                next_token=token,
            ),
        )
        return [
            Endpoint(
                endpoint_id=ep.endpoint_id or "",
                name=ep.endpoint_name or "",
                service_name=ep.service_name or "",
                status=ep.endpoint_status or "",
                connection=ep.connection_status or "",
                vpc_id=ep.vpc_id or "",
                tags=tuple(sorted((t.key or "", t.value or "") for t in ep.tags or [])),
                domain=ep.endpoint_domain or "",
            )
            for body in bodies
            for ep in body.endpoints or []
        ]

    async def list_zones(self, endpoint_id: str) -> list[Zone]:
        from alibabacloud_privatelink20200415 import models

        bodies = await self._pages(
            self.client().list_vpc_endpoint_zones_with_options_async,
            lambda token: models.ListVpcEndpointZonesRequest(
                region_id=self.region,
                endpoint_id=endpoint_id,
                max_results=self.settings.page_size,
                next_token=token,
            ),
        )
        return [
            Zone(
                zone_id=z.zone_id or "",
                status=z.zone_status or "",
                eni_id=z.eni_id or "",
                eni_ip=z.eni_ip or "",
                ipv6=z.zone_ipv_6address or "",
                vswitch_id=z.v_switch_id or "",
            )
            for body in bodies
            for z in body.zones or []
        ]

    async def _warm(self) -> None:
        """Import the SDK and build the client in a thread: ~0.5-1 s of imports that would
        otherwise stall the event loop (and DNS) at the first round. A failure here is left
        for list_endpoints to raise again and classify."""
        if self._client is None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.client)

    async def fetch(self) -> SourceResult:
        await self._warm()
        endpoints = await self.list_endpoints()
        zones: dict[str, list[Zone]] = {}
        failed: dict[str, SourceError] = {}
        wanted = {
            ep.endpoint_id
            for ep in endpoints
            if ep.usable and any(ep.matches(s.matcher) for s in self.services if s.matcher)
        }
        for endpoint_id in sorted(wanted):
            try:
                zones[endpoint_id] = await self.list_zones(endpoint_id)
            except SourceError as err:
                if err.reason in ("throttled", "auth"):
                    raise  # the whole round would fail the same way
                failed[endpoint_id] = err
        addresses: dict[str, Addresses] = {}
        incomplete: set[str] = set()
        rows: list[dict[str, str]] = []
        for service in self.services:
            assert service.matcher is not None
            v4: list[str] = []
            v6: list[str] = []
            detail: list[dict[str, str]] = []
            for ep in endpoints:
                if not ep.matches(service.matcher):
                    continue
                if ep.endpoint_id in failed:
                    incomplete.add(service.name)
                    rows.append(_row(service, ep, None, f"zones failed: {failed[ep.endpoint_id]}"))
                    continue
                if not ep.usable:
                    rows.append(_row(service, ep, None, f"{ep.status}/{ep.connection}: not used"))
                    continue
                for zone in zones.get(ep.endpoint_id, []):
                    rows.append(_row(service, ep, zone, zone.status))
                    facts = {
                        "zone": zone.zone_id,
                        "endpoint": ep.endpoint_id,
                        "eni": zone.eni_id,
                        "status": zone.status,
                    }
                    if zone.usable and zone.eni_ip:
                        v4.append(zone.eni_ip)
                        detail.append({"ip": zone.eni_ip, **facts})
                    if zone.usable and zone.ipv6:
                        v6.append(zone.ipv6)
                        detail.append({"ip": zone.ipv6, **facts})
            addresses[service.name] = Addresses(tuple(v4), tuple(v6), "privatelink", tuple(detail))
        self.rows = rows
        errors = {k: str(v) for k, v in failed.items()}
        return SourceResult(addresses, frozenset(incomplete), errors)


def _row(service: Service, ep: Endpoint, zone: Zone | None, status: str) -> dict[str, str]:
    return {
        "service": service.name,
        "domains": " ".join(service.domains),
        "endpoint": ep.endpoint_id,
        "zone": zone.zone_id if zone else "-",
        "ip": " ".join(x for x in (zone.eni_ip, zone.ipv6) if x) if zone else "-",
        "status": status,
    }


def build_credential(settings: PrivateLink) -> Any:
    """The configured credentials file/profile, else the SDK's default credentials chain (which
    asks the ECS metadata service only on Alibaba Cloud: see pldns.sync.cloudenv)."""
    metadata_allowed()
    from alibabacloud_credentials.client import Client as CredentialClient

    creds = settings.credentials
    provider = None
    if creds.file:
        from alibabacloud_credentials.provider.profile import ProfileCredentialsProvider

        provider = ProfileCredentialsProvider(
            profile_file=creds.file, profile_name=creds.profile or "default"
        )
    elif creds.profile:
        from alibabacloud_credentials.provider.cli_profile import CLIProfileCredentialsProvider

        provider = CLIProfileCredentialsProvider(profile_name=creds.profile)
    return CredentialClient(provider=provider)


def sdk_config(settings: PrivateLink, region: str, endpoint: str) -> Any:
    """An OpenAPI client config: endpoint, protocol, proxy and timeouts (milliseconds)."""
    from alibabacloud_tea_openapi import models as open_api_models

    config = open_api_models.Config(
        credential=build_credential(settings),
        region_id=region,
        endpoint=endpoint,
        protocol=settings.protocol,
        connect_timeout=int(settings.connect_timeout * 1000),
        read_timeout=int(settings.read_timeout * 1000),
    )
    if settings.https_proxy:
        config.https_proxy = settings.https_proxy
        config.http_proxy = settings.https_proxy
    return config


def quiet_sdk_logging() -> None:
    """darabonba-core adds its own DEBUG stderr handler at import, which with DEBUG=sdk in the
    environment prints whole requests (an STS token included). Route it through our handlers
    (and their redaction) at WARNING instead.

    The credentials package adds its own stderr handler too, and logs every failed attempt of
    its chain (the metadata service: a dozen tracebacks). Our error line says what failed and
    what to do, so that logger is silent unless the log level is debug, and then it goes
    through our handlers, tracebacks included."""
    import alibabacloud_credentials.provider  # noqa: F401  (registers the 'credentials' logger)

    sdk_log = logging.getLogger("darabonba-core")
    for handler in list(sdk_log.handlers):
        sdk_log.removeHandler(handler)
    sdk_log.setLevel(logging.WARNING)
    sdk_log.propagate = True
    cred_log = logging.getLogger("credentials")
    for handler in list(cred_log.handlers):
        cred_log.removeHandler(handler)
    debug = logging.getLogger().getEffectiveLevel() <= logging.DEBUG
    cred_log.setLevel(logging.DEBUG if debug else logging.CRITICAL + 1)
    cred_log.propagate = True


def build_client(settings: PrivateLink, region: str) -> Any:
    from alibabacloud_privatelink20200415.client import Client

    quiet_sdk_logging()

    return Client(sdk_config(settings, region, api_host(settings, region)))


def api_host(settings: PrivateLink, region: str) -> str:
    return settings.endpoint or f"privatelink.{region}.aliyuncs.com"

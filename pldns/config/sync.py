"""Config for where owned-name addresses come from: `sync`, `privatelink`, per-service matchers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pldns.config.schema import Problems, Section, describe, join

SOURCE_STATIC = "static"
SOURCE_PRIVATELINK = "privatelink"
SOURCE_FILE = "file"
SOURCES = (SOURCE_STATIC, SOURCE_PRIVATELINK, SOURCE_FILE)

DEFAULT_INTERVAL = 60.0
DEFAULT_JITTER = 0.1
DEFAULT_SNAPSHOT = ""
DEFAULT_FILE_POLL = 2.0
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 10.0
DEFAULT_PAGE_SIZE = 50
DEFAULT_KEEP_ROUNDS = 5
DEFAULT_HEARTBEAT = 5

# PrivateLink service names that Alibaba Cloud publishes (domain.md); {region} is expanded.
DEFAULT_SERVICE_NAMES = {
    "eci": "com.aliyuncs.privatelink.{region}.eci",
    "vpc": "com.aliyuncs.privatelink.{region}.vpc",
}


@dataclass(frozen=True)
class Matcher:
    """Which PrivateLink endpoints feed one service; every field set must match."""

    service_name: str = ""
    endpoint_id: str = ""
    endpoint_name: str = ""
    tags: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        parts = [
            f"{k}={v}"
            for k, v in (
                ("service_name", self.service_name),
                ("endpoint_id", self.endpoint_id),
                ("endpoint_name", self.endpoint_name),
            )
            if v
        ]
        parts += [f"tag {k}={v}" for k, v in self.tags]
        return ", ".join(parts)


@dataclass(frozen=True)
class Credentials:
    """Where the AccessKey comes from. Never the key itself: YAML holds no secret."""

    profile: str = ""  # a profile in the credentials file / aliyun CLI config
    file: str = ""  # an ini credentials file (ALIBABA_CLOUD_CREDENTIALS_FILE)


@dataclass(frozen=True)
class PrivateLink:
    vpc_id: str = ""
    region: str = ""  # defaults to the top-level region
    endpoint: str = ""  # API host; default privatelink.{region}.aliyuncs.com
    pvtz_endpoint: str = ""  # PrivateZone API host for `discover`; default pvtz.aliyuncs.com
    protocol: str = "https"
    https_proxy: str = ""
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    page_size: int = DEFAULT_PAGE_SIZE
    credentials: Credentials = field(default_factory=Credentials)


@dataclass(frozen=True)
class Sync:
    source: str = SOURCE_STATIC
    interval: float = DEFAULT_INTERVAL
    jitter: float = DEFAULT_JITTER
    snapshot: str = DEFAULT_SNAPSHOT  # last-known-good file; "" = none
    file: str = ""  # the snapshot to follow with source: file
    poll: float = DEFAULT_FILE_POLL
    # Rounds a service that had addresses keeps them after a good round finds none for it.
    keep_rounds: int = DEFAULT_KEEP_ROUNDS
    # The syncer republishes an unchanged snapshot (fresh generated_at) every this many
    # intervals, so a node can tell a live syncer with stable IPs from a dead one.
    heartbeat: int = DEFAULT_HEARTBEAT
    # /readyz and READY=1 also wait for a loaded table (the old gate); off by default.
    ready_requires_table: bool = False


def parse_sync(s: Section) -> Sync:
    sync = Sync(
        source=s.string("source", SOURCE_STATIC, choices=SOURCES),
        interval=s.number("interval", DEFAULT_INTERVAL, 1, 86400),
        jitter=s.number("jitter", DEFAULT_JITTER, 0, 0.5),
        snapshot=s.string("snapshot", DEFAULT_SNAPSHOT),
        file=s.string("file", ""),
        poll=s.number("poll", DEFAULT_FILE_POLL, 0.1, 3600),
        keep_rounds=s.number("keep_rounds", DEFAULT_KEEP_ROUNDS, 0, 100000, integer=True),
        heartbeat=s.number("heartbeat", DEFAULT_HEARTBEAT, 1, 10000, integer=True),
        ready_requires_table=s.boolean("ready_requires_table", False),
    )
    if sync.source == SOURCE_FILE and not sync.file:
        s.problems.add(join(s.path, "file"), "is required when source is file")
    s.close()
    return sync


SECRET_KEYS = (
    "access_key_id",
    "access_key_secret",
    "secret",
    "access_key",
    "security_token",
    "accesskeyid",
    "accesskeysecret",
)


def parse_privatelink(s: Section, region: str) -> PrivateLink:
    creds = s.section("credentials")
    credentials = Credentials(
        profile=creds.string("profile", ""),
        file=creds.string("file", ""),
    )
    # A secret under privatelink.credentials or straight under privatelink: the same message,
    # never "unknown key" (which would invite a fix that keeps the secret in the file).
    for section in (creds, s):
        for key in SECRET_KEYS:
            if section.has(key):
                section.seen.add(key)
                section.problems.add(
                    join(section.path, key),
                    "secrets do not belong in the config: use the credentials chain "
                    "(environment, RRSA, credentials file; see README)",
                )
    creds.close()
    pl = PrivateLink(
        vpc_id=s.string("vpc_id", ""),
        region=s.string("region", "") or region,
        endpoint=s.string("endpoint", ""),
        pvtz_endpoint=s.string("pvtz_endpoint", ""),
        protocol=s.string("protocol", "https", choices=("https", "http")),
        https_proxy=s.string("https_proxy", ""),
        connect_timeout=s.number("connect_timeout", DEFAULT_CONNECT_TIMEOUT, 0.1, 300),
        read_timeout=s.number("read_timeout", DEFAULT_READ_TIMEOUT, 0.1, 300),
        page_size=s.number("page_size", DEFAULT_PAGE_SIZE, 1, 1000, integer=True),
        credentials=credentials,
    )
    s.close()
    return pl


def parse_matcher(
    value: Any, path: str, service: str, region: str, problems: Problems
) -> Matcher | None:
    """A service's `privatelink:` block; absent → the default service name, if one exists."""
    if value is None:
        default = DEFAULT_SERVICE_NAMES.get(service)
        return Matcher(service_name=default.format(region=region)) if default else None
    s = Section(value, path, problems)
    tags: list[tuple[str, str]] = []
    raw_tags = s.raw("tags", {})
    if not isinstance(raw_tags, dict):
        problems.add(
            join(path, "tags"), f"expected a mapping of key: value, got {describe(raw_tags)}"
        )
    else:
        for key, tag_value in raw_tags.items():
            if not isinstance(key, str) or not isinstance(tag_value, str | int | float):
                problems.add(join(join(path, "tags"), str(key)), "expected a string tag value")
                continue
            tags.append((key, str(tag_value)))
    matcher = Matcher(
        service_name=(s.string("service_name", "")).replace("{region}", region),
        endpoint_id=s.string("endpoint_id", ""),
        endpoint_name=s.string("endpoint_name", ""),
        tags=tuple(sorted(tags)),
    )
    s.close()
    if not (matcher.service_name or matcher.endpoint_id or matcher.endpoint_name or matcher.tags):
        problems.add(
            path, "expected at least one of service_name, endpoint_id, endpoint_name, tags"
        )
        return None
    return matcher

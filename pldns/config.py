"""The configuration: YAML parsed strictly into frozen dataclasses.

`parse_config` is pure (a mapping in, a Config or ConfigError out); `load_config` reads the
file. Every key, its default and its meaning is documented in the README's Syntax section.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pldns.errors import ConfigError
from pldns.opsconfig import (
    Http,
    Leaks,
    Lifecycle,
    Log,
    parse_http,
    parse_leaks,
    parse_lifecycle,
    parse_log,
)
from pldns.schema import (
    Problems,
    Section,
    describe,
    join,
    parse_hostport,
    parse_ip,
    parse_network,
)
from pldns.sourceconfig import (
    SOURCE_PRIVATELINK,
    Matcher,
    PrivateLink,
    Sync,
    parse_matcher,
    parse_privatelink,
    parse_sync,
)

RESOLV_CONF = "resolv.conf"
DEFAULT_LISTEN = ("127.0.0.1:53",)
DEFAULT_UPSTREAMS = (RESOLV_CONF,)
# Loopback, RFC 1918, the shared/CGNAT range (many IDCs number hosts from it), ULA, link-local.
DEFAULT_ALLOW = (
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
)
DEFAULT_TTL = 30
DEFAULT_TRY_TIMEOUT = 1.0
DEFAULT_DEADLINE = 3.0
DEFAULT_MAX_INFLIGHT = 10_000
DEFAULT_UDP_SOCKETS = 8
DEFAULT_SOCKET_QUERIES = 2_000
DEFAULT_IDLE_TIMEOUT = 10.0
DEFAULT_MAX_CONNECTIONS = 1_000
DEFAULT_MAX_PIPELINED = 100
DEFAULT_RESOLV_CONF = "/etc/resolv.conf"

_SERVICE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Answers:
    ttl: int = DEFAULT_TTL
    when_unknown: str = "forward"


@dataclass(frozen=True)
class Forward:
    try_timeout: float = DEFAULT_TRY_TIMEOUT
    deadline: float = DEFAULT_DEADLINE
    max_inflight: int = DEFAULT_MAX_INFLIGHT
    udp_sockets: int = DEFAULT_UDP_SOCKETS
    socket_queries: int = DEFAULT_SOCKET_QUERIES
    resolv_conf: str = DEFAULT_RESOLV_CONF


@dataclass(frozen=True)
class Tcp:
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_pipelined: int = DEFAULT_MAX_PIPELINED


@dataclass(frozen=True)
class Service:
    name: str
    domains: tuple[str, ...]
    static: tuple[str, ...] = ()
    matcher: Matcher | None = None  # which PrivateLink endpoints feed it (source privatelink)

    @property
    def static_v4(self) -> tuple[str, ...]:
        return tuple(ip for ip in self.static if ":" not in ip)

    @property
    def static_v6(self) -> tuple[str, ...]:
        return tuple(ip for ip in self.static if ":" in ip)


@dataclass(frozen=True)
class Config:
    region: str
    listen: tuple[HostPort, ...] = ()
    upstreams: tuple[HostPort | str, ...] = ()  # HostPort, or RESOLV_CONF
    allow: tuple[str, ...] = DEFAULT_ALLOW
    deny: str = "refuse"
    answers: Answers = field(default_factory=Answers)
    forward: Forward = field(default_factory=Forward)
    tcp: Tcp = field(default_factory=Tcp)
    services: tuple[Service, ...] = ()
    sync: Sync = field(default_factory=Sync)
    privatelink: PrivateLink = field(default_factory=PrivateLink)
    http: Http = field(default_factory=Http)
    log: Log = field(default_factory=Log)
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    leaks: Leaks = field(default_factory=Leaks)
    source: str = ""  # the file it was read from, for messages


def load_config(path: str | Path) -> Config:
    """Read and parse a config file; ConfigError on any problem (I/O and YAML included)."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError([f"{path}: cannot read: {err.strerror or err}"]) from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        lines = text.splitlines()
        line = lines[mark.line] if mark is not None and mark.line < len(lines) else ""
        hint = (
            "\n  hint: inside [...] a '{' starts a YAML mapping; quote templated names, "
            'e.g. ["eci-vpc.{region}.aliyuncs.com"], or use a block list'
            if "[" in line and "{" in line
            else ""
        )
        raise ConfigError([f"{path}: not valid YAML: {err}{hint}"]) from err
    return parse_config(data, source=str(path))


def parse_config(data: Any, source: str = "") -> Config:
    problems = Problems()
    top = Section(data, "", problems)
    region = top.string("region")
    if region and not re.fullmatch(r"[a-z0-9-]+", region):
        problems.add("region", f"expected a region id such as cn-hangzhou, got {region!r}")
    listen = top.listed("listen", lambda p, v: _hostport(problems, p, v), list(DEFAULT_LISTEN))
    if top.has("listen") and not listen and not problems.items:
        problems.add("listen", "expected at least one address")
    for index, address in enumerate(listen):
        if address in listen[:index]:
            problems.add(f"listen[{index}]", f"{address} is listed twice")
    upstreams: list[HostPort | str] = top.listed(
        "upstreams", lambda p, v: _upstream(problems, p, v), list(DEFAULT_UPSTREAMS)
    )
    if not upstreams and not any(i.startswith("upstreams") for i in problems.items):
        problems.add("upstreams", "expected at least one upstream")
    allow = top.listed("allow", lambda p, v: parse_network(problems, p, v), list(DEFAULT_ALLOW))
    deny = top.string("deny", "refuse", choices=("refuse", "drop"))
    answers = _answers(top.section("answers"))
    forward = _forward(top.section("forward"))
    tcp = _tcp(top.section("tcp"))
    services = _services(top.section("services"), region, problems)
    sync = parse_sync(top.section("sync"))
    privatelink = parse_privatelink(top.section("privatelink"), region)
    if sync.source == SOURCE_PRIVATELINK:
        _check_privatelink(privatelink, services, problems)
    if sync.source != "static" and answers.ttl > sync.interval:
        # Clients must not cache an answer longer than it takes us to notice a change.
        problems.add(
            "answers.ttl", f"expected at most sync.interval ({sync.interval:g}s), got {answers.ttl}"
        )
    http = parse_http(top.section("http"))
    log = parse_log(top.section("log"))
    lifecycle = parse_lifecycle(top.section("lifecycle"))
    leaks = parse_leaks(top.section("leaks"))
    top.close()
    if problems.items:
        raise ConfigError(problems.items)
    return Config(
        region=region,
        listen=tuple(listen),
        upstreams=tuple(upstreams),
        allow=tuple(allow),
        deny=deny,
        answers=answers,
        forward=forward,
        tcp=tcp,
        services=tuple(services),
        sync=sync,
        privatelink=privatelink,
        http=http,
        log=log,
        lifecycle=lifecycle,
        leaks=leaks,
        source=source,
    )


def _check_privatelink(pl: PrivateLink, services: list[Service], problems: Problems) -> None:
    if not pl.vpc_id:
        problems.add("privatelink.vpc_id", "is required when sync.source is privatelink")
    for service in services:
        if service.matcher is None and not service.static:
            problems.add(
                f"services.{service.name}.privatelink",
                "is required when sync.source is privatelink (no default PrivateLink service "
                f"name for {service.name!r}; give service_name, endpoint_id, endpoint_name or tags)",
            )


def _hostport(problems: Problems, path: str, value: Any) -> HostPort | None:
    parsed = parse_hostport(problems, path, value, 53)
    return None if parsed is None else HostPort(*parsed)


def _upstream(problems: Problems, path: str, value: Any) -> HostPort | str | None:
    if value == RESOLV_CONF:
        return RESOLV_CONF
    return _hostport(problems, path, value)


def _answers(s: Section) -> Answers:
    answers = Answers(
        ttl=s.number("ttl", DEFAULT_TTL, 0, 86400, integer=True),
        when_unknown=s.string("when_unknown", "forward", choices=("forward", "servfail")),
    )
    s.close()
    return answers


def _forward(s: Section) -> Forward:
    forward = Forward(
        try_timeout=s.number("try_timeout", DEFAULT_TRY_TIMEOUT, 0.05, 30),
        deadline=s.number("deadline", DEFAULT_DEADLINE, 0.1, 60),
        max_inflight=s.number("max_inflight", DEFAULT_MAX_INFLIGHT, 1, 1_000_000, integer=True),
        udp_sockets=s.number("udp_sockets", DEFAULT_UDP_SOCKETS, 1, 256, integer=True),
        socket_queries=s.number(
            "socket_queries", DEFAULT_SOCKET_QUERIES, 1, 1_000_000, integer=True
        ),
        resolv_conf=s.string("resolv_conf", DEFAULT_RESOLV_CONF),
    )
    if forward.deadline < forward.try_timeout:
        s.problems.add(
            join(s.path, "deadline"),
            f"expected at least try_timeout ({forward.try_timeout:g}), got {forward.deadline:g}",
        )
    s.close()
    return forward


def _tcp(s: Section) -> Tcp:
    tcp = Tcp(
        idle_timeout=s.number("idle_timeout", DEFAULT_IDLE_TIMEOUT, 0.1, 3600),
        max_connections=s.number(
            "max_connections", DEFAULT_MAX_CONNECTIONS, 1, 100_000, integer=True
        ),
        max_pipelined=s.number("max_pipelined", DEFAULT_MAX_PIPELINED, 1, 10_000, integer=True),
    )
    s.close()
    return tcp


def _services(s: Section, region: str, problems: Problems) -> list[Service]:
    services: list[Service] = []
    owner: dict[str, str] = {}
    for name in list(s.data):
        path = join(s.path, str(name))
        s.seen.add(name)
        if not isinstance(name, str) or not _SERVICE_NAME.match(name):
            problems.add(path, "expected a service name of lower-case letters, digits, - or _")
            continue
        body = Section(s.data[name], path, problems)
        domains = body.listed("domains", lambda p, v: expand_domain(problems, p, v, region), None)
        if not domains and not any(i.startswith(join(path, "domains")) for i in problems.items):
            problems.add(join(path, "domains"), "expected at least one domain")
        static = body.listed("static", lambda p, v: parse_ip(problems, p, v), [])
        matcher = parse_matcher(
            body.raw("privatelink", None), join(path, "privatelink"), name, region, problems
        )
        body.close()
        for index, domain in enumerate(domains):
            other = owner.setdefault(domain, name)
            if other != name:
                problems.add(
                    join(join(path, "domains"), index),
                    f"{domain!r} is already owned by service {other!r}",
                )
        services.append(
            Service(name=name, domains=tuple(domains), static=tuple(static), matcher=matcher)
        )
    return services


def expand_domain(problems: Problems, path: str, value: Any, region: str) -> str | None:
    """'eci-vpc.{region}.aliyuncs.com' -> a checked, lower-case, dot-less FQDN."""
    if not isinstance(value, str):
        problems.add(path, f"expected a domain name, got {describe(value)}")
        return None
    for placeholder in _PLACEHOLDER.findall(value):
        if placeholder != "region":
            problems.add(path, f"unknown placeholder {{{placeholder}}} (only {{region}} is known)")
            return None
    name = value.replace("{region}", region).rstrip(".").lower()
    labels = name.split(".")
    if len(name) > 253 or len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        problems.add(path, f"{value!r} is not a valid domain name")
        return None
    return name

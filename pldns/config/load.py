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

from pldns.config.cache import parse_cache
from pldns.config.dns import (
    DEFAULT_ALLOW,
    DEFAULT_LISTEN,
    DEFAULT_UPSTREAMS,
    Service,
    parse_answers,
    parse_forward,
    parse_listen,
    parse_services,
    parse_tcp,
    parse_upstream,
)
from pldns.config.ops import (
    Http,
    Lifecycle,
    Log,
    parse_http,
    parse_leaks,
    parse_lifecycle,
    parse_log,
)
from pldns.config.schema import ConfigError, Problems, Section, parse_network
from pldns.config.sync import (
    SOURCE_PRIVATELINK,
    PrivateLink,
    Sync,
    parse_privatelink,
    parse_sync,
)
from pldns.dns.settings import Answers, Cache, Forward, HostPort, Leaks, Tcp


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
    cache: Cache = field(default_factory=Cache)
    workers: int = 1  # DNS processes; 0 = auto (the CPUs this process may run on)
    source: str = ""  # the file it was read from, for messages


MAX_WORKERS = 1024


def parse_workers(value: Any, problems: Problems) -> int:
    """`workers`: an integer from 1 to 1024, or "auto" (stored as 0, resolved at start)."""
    if value == "auto":
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WORKERS:
        problems.add(
            "workers", f'expected an integer from 1 to {MAX_WORKERS} or "auto", got {value!r}'
        )
        return 1
    return value


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
    listen = top.listed("listen", lambda p, v: parse_listen(problems, p, v), list(DEFAULT_LISTEN))
    if top.has("listen") and not listen and not problems.items:
        problems.add("listen", "expected at least one address")
    for index, address in enumerate(listen):
        if address in listen[:index]:
            problems.add(f"listen[{index}]", f"{address} is listed twice")
    upstreams: list[HostPort | str] = top.listed(
        "upstreams", lambda p, v: parse_upstream(problems, p, v), list(DEFAULT_UPSTREAMS)
    )
    if not upstreams and not any(i.startswith("upstreams") for i in problems.items):
        problems.add("upstreams", "expected at least one upstream")
    allow = top.listed("allow", lambda p, v: parse_network(problems, p, v), list(DEFAULT_ALLOW))
    deny = top.string("deny", "refuse", choices=("refuse", "drop"))
    answers = parse_answers(top.section("answers"))
    forward = parse_forward(top.section("forward"))
    tcp = parse_tcp(top.section("tcp"))
    services = parse_services(top.section("services"), region, problems)
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
    cache = parse_cache(top.section("cache"))
    workers = parse_workers(top.raw("workers", 1), problems)
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
        cache=cache,
        workers=workers,
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

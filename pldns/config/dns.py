"""Parsing the DNS sections of the config: listen, upstreams, allow, answers, forward, tcp,
services."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pldns.config.schema import Problems, Section, describe, join, parse_hostport, parse_ip
from pldns.config.sync import Matcher, parse_matcher
from pldns.dns.settings import (
    DEFAULT_DEADLINE,
    DEFAULT_HEALTH_INTERVAL,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_FAILS,
    DEFAULT_MAX_INFLIGHT,
    DEFAULT_MAX_PIPELINED,
    DEFAULT_MAX_QUEUED_BYTES,
    DEFAULT_MAX_UDP_SIZE,
    DEFAULT_QUERY_TIMEOUT,
    DEFAULT_RESOLV_CONF,
    DEFAULT_RISE,
    DEFAULT_SOCKET_QUERIES,
    DEFAULT_TCP_CONNECTIONS,
    DEFAULT_TCP_IDLE,
    DEFAULT_TRY_TIMEOUT,
    DEFAULT_TTL,
    DEFAULT_UDP_SOCKETS,
    Answers,
    Forward,
    HostPort,
    Tcp,
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
    "169.254.0.0/16",  # link-local, like fe80::/10 below: on-link only (RFC 3927 section 7)
    "::1/128",
    "fc00::/7",
    "fe80::/10",
)

_SERVICE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


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


def parse_listen(problems: Problems, path: str, value: Any) -> HostPort | None:
    parsed = parse_hostport(problems, path, value, 53)
    return None if parsed is None else HostPort(*parsed)


def parse_upstream(problems: Problems, path: str, value: Any) -> HostPort | str | None:
    if value == RESOLV_CONF:
        return RESOLV_CONF
    return parse_listen(problems, path, value)


def parse_answers(s: Section) -> Answers:
    answers = Answers(
        ttl=s.number("ttl", DEFAULT_TTL, 0, 86400, integer=True),
        when_unknown=s.string("when_unknown", "forward", choices=("forward", "servfail")),
        ptr=s.boolean("ptr", False),
    )
    s.close()
    return answers


def parse_forward(s: Section) -> Forward:
    forward = Forward(
        try_timeout=s.number("try_timeout", DEFAULT_TRY_TIMEOUT, 0.05, 30),
        deadline=s.number("deadline", DEFAULT_DEADLINE, 0.1, 60),
        max_inflight=s.number("max_inflight", DEFAULT_MAX_INFLIGHT, 1, 1_000_000, integer=True),
        udp_sockets=s.number("udp_sockets", DEFAULT_UDP_SOCKETS, 1, 256, integer=True),
        socket_queries=s.number(
            "socket_queries", DEFAULT_SOCKET_QUERIES, 1, 1_000_000, integer=True
        ),
        resolv_conf=s.string("resolv_conf", DEFAULT_RESOLV_CONF),
        max_fails=s.number("max_fails", DEFAULT_MAX_FAILS, 1, 1000, integer=True),
        rise=s.number("rise", DEFAULT_RISE, 1, 1000, integer=True),
        health_interval=s.number("health_interval", DEFAULT_HEALTH_INTERVAL, 0.05, 60),
        tcp_connections=s.number("tcp_connections", DEFAULT_TCP_CONNECTIONS, 1, 64, integer=True),
        tcp_idle=s.number("tcp_idle", DEFAULT_TCP_IDLE, 0.1, 3600),
        # 65507: the largest UDP payload over IPv4 (65535 - 20 - 8); larger cannot be sent.
        max_udp_size=s.number("max_udp_size", DEFAULT_MAX_UDP_SIZE, 512, 65507, integer=True),
    )
    if forward.deadline < forward.try_timeout:
        s.problems.add(
            join(s.path, "deadline"),
            f"expected at least try_timeout ({forward.try_timeout:g}), got {forward.deadline:g}",
        )
    s.close()
    return forward


def parse_tcp(s: Section) -> Tcp:
    tcp = Tcp(
        idle_timeout=s.number("idle_timeout", DEFAULT_IDLE_TIMEOUT, 0.1, 3600),
        max_connections=s.number(
            "max_connections", DEFAULT_MAX_CONNECTIONS, 1, 100_000, integer=True
        ),
        max_pipelined=s.number("max_pipelined", DEFAULT_MAX_PIPELINED, 1, 10_000, integer=True),
        query_timeout=s.number("query_timeout", DEFAULT_QUERY_TIMEOUT, 0.1, 3600),
        max_queued_bytes=s.number(
            "max_queued_bytes", DEFAULT_MAX_QUEUED_BYTES, 65_537, 1 << 30, integer=True
        ),
    )

    s.close()
    return tcp


def parse_services(s: Section, region: str, problems: Problems) -> list[Service]:
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

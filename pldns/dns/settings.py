"""The data plane's settings: frozen dataclasses the DNS modules take, with their defaults.

The config package parses YAML into these; nothing here knows about YAML.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_TTL = 30
DEFAULT_TRY_TIMEOUT = 1.0
DEFAULT_DEADLINE = 3.0
DEFAULT_MAX_INFLIGHT = 10_000
DEFAULT_UDP_SOCKETS = 8
DEFAULT_SOCKET_QUERIES = 2_000
DEFAULT_MAX_FAILS = 2
DEFAULT_RISE = 1
DEFAULT_HEALTH_INTERVAL = 0.5
DEFAULT_TCP_CONNECTIONS = 2
DEFAULT_TCP_IDLE = 10.0
DEFAULT_MAX_UDP_SIZE = 1232
DEFAULT_IDLE_TIMEOUT = 10.0
DEFAULT_QUERY_TIMEOUT = 2.0
DEFAULT_MAX_QUEUED_BYTES = 262_144
DEFAULT_MAX_CONNECTIONS = 1_000
DEFAULT_MAX_PIPELINED = 100
DEFAULT_RESOLV_CONF = "/etc/resolv.conf"
DEFAULT_LEAK_SUFFIXES = ("aliyuncs.com",)
DEFAULT_LEAK_RANGES = ("100.64.0.0/10",)
DEFAULT_LEAK_INTERVAL = 300.0


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
    ptr: bool = False  # own the reverse names of the served addresses


@dataclass(frozen=True)
class Forward:
    try_timeout: float = DEFAULT_TRY_TIMEOUT
    deadline: float = DEFAULT_DEADLINE
    max_inflight: int = DEFAULT_MAX_INFLIGHT
    udp_sockets: int = DEFAULT_UDP_SOCKETS
    socket_queries: int = DEFAULT_SOCKET_QUERIES
    resolv_conf: str = DEFAULT_RESOLV_CONF
    max_fails: int = DEFAULT_MAX_FAILS  # timeouts/errors in a row that take an upstream out
    rise: int = DEFAULT_RISE  # good probes in a row that bring it back
    health_interval: float = DEFAULT_HEALTH_INTERVAL  # seconds between probes of a down one
    tcp_connections: int = DEFAULT_TCP_CONNECTIONS  # pooled TCP connections per upstream
    tcp_idle: float = DEFAULT_TCP_IDLE  # seconds before an unused upstream connection closes
    max_udp_size: int = DEFAULT_MAX_UDP_SIZE  # largest UDP reply, whatever the client says


@dataclass(frozen=True)
class Tcp:
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_pipelined: int = DEFAULT_MAX_PIPELINED
    query_timeout: float = DEFAULT_QUERY_TIMEOUT  # seconds a query may take to arrive whole
    max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES  # unread reply bytes before closing


@dataclass(frozen=True)
class Leaks:
    enabled: bool = True
    suffixes: tuple[str, ...] = DEFAULT_LEAK_SUFFIXES
    ranges: tuple[str, ...] = DEFAULT_LEAK_RANGES
    interval: float = DEFAULT_LEAK_INTERVAL  # log a leaking name at most once per interval


# The cache (`cache:`). Defaults follow CoreDNS's cache plugin where it has one (success TTL
# cap 3600, denial cap 1800, SERVFAIL 5 s) and RFC 8767 for serve-stale (30 s TTL on stale
# answers, a 1.8 s client-response timer, stale data kept up to 1 day past expiry).
DEFAULT_CACHE_SIZE = 100_000
DEFAULT_CACHE_MAX_TTL = 3600
DEFAULT_CACHE_MAX_NEGATIVE_TTL = 1800
DEFAULT_CACHE_SERVFAIL_TTL = 5
DEFAULT_CACHE_STALE_WINDOW = 86400
DEFAULT_CACHE_STALE_TTL = 30
DEFAULT_CACHE_CLIENT_TIMEOUT = 1.8
DEFAULT_CACHE_PREFETCH = 10


@dataclass(frozen=True)
class Cache:
    enabled: bool = True
    size: int = DEFAULT_CACHE_SIZE  # entries; the least recently used goes first
    min_ttl: int = 0  # seconds: a shorter lifetime is raised to this (TTL 0 is never cached)
    max_ttl: int = DEFAULT_CACHE_MAX_TTL  # cap for answers
    max_negative_ttl: int = DEFAULT_CACHE_MAX_NEGATIVE_TTL  # cap for NXDOMAIN / NODATA
    servfail_ttl: int = DEFAULT_CACHE_SERVFAIL_TTL  # seconds a SERVFAIL is kept (0 = never)
    stale_window: int = DEFAULT_CACHE_STALE_WINDOW  # seconds past expiry stale data may serve
    stale_ttl: int = DEFAULT_CACHE_STALE_TTL  # TTL of a stale answer (RFC 8767 §4)
    client_timeout: float = DEFAULT_CACHE_CLIENT_TIMEOUT  # then answer stale (RFC 8767 §5)
    prefetch: int = DEFAULT_CACHE_PREFETCH  # hits before an entry is refreshed early; 0 = off

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
DEFAULT_IDLE_TIMEOUT = 10.0
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


@dataclass(frozen=True)
class Tcp:
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_pipelined: int = DEFAULT_MAX_PIPELINED


@dataclass(frozen=True)
class Leaks:
    enabled: bool = True
    suffixes: tuple[str, ...] = DEFAULT_LEAK_SUFFIXES
    ranges: tuple[str, ...] = DEFAULT_LEAK_RANGES
    interval: float = DEFAULT_LEAK_INTERVAL  # log a leaking name at most once per interval

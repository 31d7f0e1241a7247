"""Config for operating pldns: the HTTP endpoint, logs, lifecycle, leak detection (parsing)."""

from __future__ import annotations

from dataclasses import dataclass

from pldns.config.schema import Section, parse_hostport, parse_network
from pldns.dns.settings import (
    DEFAULT_LEAK_INTERVAL,
    DEFAULT_LEAK_RANGES,
    DEFAULT_LEAK_SUFFIXES,
    Leaks,
)

DEFAULT_HTTP_LISTEN = "127.0.0.1:9153"
DEFAULT_LAME_DUCK = 5.0
DEFAULT_DRAIN = 5.0
DEFAULT_RELOAD_POLL = 2.0


@dataclass(frozen=True)
class Http:
    listen: tuple[str, int] | None = ("127.0.0.1", 9153)  # None: no HTTP endpoint


@dataclass(frozen=True)
class Log:
    format: str = "text"  # text | json
    level: str = "info"
    queries: float = 0.0  # fraction of queries written to the query log (0 = off)


@dataclass(frozen=True)
class Lifecycle:
    lame_duck: float = DEFAULT_LAME_DUCK  # seconds /readyz fails while DNS still answers
    drain: float = DEFAULT_DRAIN  # seconds in-flight queries get after listeners close
    reload_poll: float = DEFAULT_RELOAD_POLL  # config file check period; 0 = SIGHUP only


def parse_http(s: Section) -> Http:
    value = s.raw("listen", DEFAULT_HTTP_LISTEN)
    listen = None
    if value not in ("", "off", False):
        listen = parse_hostport(s.problems, f"{s.path}.listen", value, 9153)
    s.close()
    return Http(listen=listen)


def parse_log(s: Section) -> Log:
    log = Log(
        format=s.string("format", "text", choices=("text", "json")),
        level=s.string("level", "info", choices=("debug", "info", "warning", "error")),
        queries=s.number("queries", 0.0, 0.0, 1.0),
    )
    s.close()
    return log


def parse_lifecycle(s: Section) -> Lifecycle:
    lifecycle = Lifecycle(
        lame_duck=s.number("lame_duck", DEFAULT_LAME_DUCK, 0, 300),
        drain=s.number("drain", DEFAULT_DRAIN, 0, 300),
        reload_poll=s.number("reload_poll", DEFAULT_RELOAD_POLL, 0, 3600),
    )
    s.close()
    return lifecycle


def parse_leaks(s: Section) -> Leaks:
    suffixes = []
    for path, item in s.items("suffixes", list(DEFAULT_LEAK_SUFFIXES)):
        if not isinstance(item, str) or not item.strip("."):
            s.problems.add(path, f"expected a domain suffix such as aliyuncs.com, got {item!r}")
            continue
        suffixes.append(item.strip(".").lower())
    ranges = s.listed(
        "ranges", lambda p, v: parse_network(s.problems, p, v), list(DEFAULT_LEAK_RANGES)
    )
    leaks = Leaks(
        enabled=s.boolean("enabled", True),
        suffixes=tuple(suffixes),
        ranges=tuple(ranges),
        interval=s.number("interval", DEFAULT_LEAK_INTERVAL, 1, 86400),
    )
    s.close()
    return leaks

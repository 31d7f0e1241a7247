"""The `cache:` section: the packet cache's size, TTL bounds, serve-stale and prefetch."""

from __future__ import annotations

from pldns.config.schema import Section
from pldns.dns.settings import (
    DEFAULT_CACHE_CLIENT_TIMEOUT,
    DEFAULT_CACHE_MAX_NEGATIVE_TTL,
    DEFAULT_CACHE_MAX_TTL,
    DEFAULT_CACHE_PREFETCH,
    DEFAULT_CACHE_SERVFAIL_TTL,
    DEFAULT_CACHE_SIZE,
    DEFAULT_CACHE_STALE_TTL,
    DEFAULT_CACHE_STALE_WINDOW,
    Cache,
)

DAY = 86400
MAX_SIZE = 10_000_000
MAX_SERVFAIL_TTL = 300  # RFC 2308 §7.1: a SERVFAIL is not cached for more than five minutes


def parse_cache(s: Section) -> Cache:
    def seconds(key: str, default: int, low: int, high: int) -> int:
        return int(s.number(key, default, low, high, integer=True))

    cache = Cache(
        enabled=s.boolean("enabled", True),
        size=seconds("size", DEFAULT_CACHE_SIZE, 1, MAX_SIZE),
        min_ttl=seconds("min_ttl", 0, 0, DAY),
        max_ttl=seconds("max_ttl", DEFAULT_CACHE_MAX_TTL, 1, 7 * DAY),
        max_negative_ttl=seconds("max_negative_ttl", DEFAULT_CACHE_MAX_NEGATIVE_TTL, 1, DAY),
        servfail_ttl=seconds("servfail_ttl", DEFAULT_CACHE_SERVFAIL_TTL, 0, MAX_SERVFAIL_TTL),
        stale_window=seconds("stale_window", DEFAULT_CACHE_STALE_WINDOW, 0, 7 * DAY),
        stale_ttl=seconds("stale_ttl", DEFAULT_CACHE_STALE_TTL, 1, 3600),
        client_timeout=float(s.number("client_timeout", DEFAULT_CACHE_CLIENT_TIMEOUT, 0.05, 60.0)),
        prefetch=seconds("prefetch", DEFAULT_CACHE_PREFETCH, 0, 1_000_000),
    )
    if cache.min_ttl > cache.max_ttl:
        s.problems.add(
            f"{s.path}.min_ttl", f"expected at most max_ttl ({cache.max_ttl}), got {cache.min_ttl}"
        )
    s.close()
    return cache

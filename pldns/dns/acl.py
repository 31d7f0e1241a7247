"""Which clients get answers: a CIDR allow list, with a bounded per-address cache."""

from __future__ import annotations

from collections.abc import Iterable

import netaddr

_CACHE_MAX = 65_536


class Acl:
    """`allowed(host)` for the textual address a socket reports (IPv4-mapped IPv6 handled)."""

    def __init__(self, networks: Iterable[str]) -> None:
        self._set = netaddr.IPSet(networks)
        self._cache: dict[str, bool] = {}

    def allowed(self, host: str) -> bool:
        hit = self._cache.get(host)
        if hit is not None:
            return hit
        try:
            addr = netaddr.IPAddress(host.split("%", 1)[0])
        except (netaddr.AddrFormatError, ValueError):
            return False
        if addr.version == 6 and addr.is_ipv4_mapped():
            addr = addr.ipv4()
        result = addr in self._set
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()  # bounded: a spray of sources cannot grow memory
        self._cache[host] = result
        return result

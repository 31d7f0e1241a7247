"""Which clients get answers: a CIDR allow list, with a bounded per-address cache.

A query whose source is one of the addresses pldns itself listens on is always allowed, whatever
`allow` says: such a packet can only come from this host (Linux drops a packet that arrives from
outside with one of the host's own addresses as its source, `accept_local` being off by default),
and a query sent from the node to a node-local address (169.254.20.53) carries that address as
its source. So the node, its host-network pods and the kubelet can always use a node-local pldns.
"""

from __future__ import annotations

from collections.abc import Iterable

import netaddr  # type: ignore[import-untyped]

_CACHE_MAX = 65_536
_WILDCARDS = ("0.0.0.0", "::")


class Acl:
    """`allowed(host)` for the textual address a socket reports (IPv4-mapped IPv6 handled)."""

    def __init__(self, networks: Iterable[str], local: Iterable[str] = ()) -> None:
        self._set = netaddr.IPSet(networks)
        # The specific addresses we listen on (a wildcard listen says nothing about the source).
        self._local = netaddr.IPSet(
            netaddr.IPAddress(h.split("%", 1)[0]) for h in local if h not in _WILDCARDS
        )
        # host text -> allowed; bounded. _mmsg.serve reads it too (only True is served there).
        self.verdicts: dict[str, bool] = {}

    def allowed(self, host: str) -> bool:
        hit = self.verdicts.get(host)
        if hit is not None:
            return hit
        try:
            addr = netaddr.IPAddress(host.split("%", 1)[0])
        except (netaddr.AddrFormatError, ValueError):
            return False
        if addr.version == 6 and addr.is_ipv4_mapped():
            addr = addr.ipv4()
        result = addr in self._set or addr in self._local
        if len(self.verdicts) >= _CACHE_MAX:
            self.verdicts.clear()  # bounded: a spray of sources cannot grow memory
        self.verdicts[host] = result
        return result

"""Leak detection: a forwarded answer for a cloud API name that points into the clash range.

When an upstream answers a name under a watched suffix (aliyuncs.com) with an address in a
conflict range (100.64.0.0/10), that name is one the config forgot to own: its traffic is
about to be routed into the clash. Each such name is logged once per interval and counted.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from pldns.dns.rcode import FormatError
from pldns.dns.settings import Leaks
from pldns.dns.wire import TYPE_A, TYPE_AAAA, decode_name, encode_name, skip_name

log = logging.getLogger("pldns.leak")

MAX_NAMES: Final = 1_000  # names remembered; the oldest is forgotten first
# Addresses remembered per name: the first ones seen. An upstream that rotates through the
# 4M addresses of 100.64.0.0/10 must not grow a record (or its log line, or /status) forever.
MAX_ADDRESSES: Final = 16


@dataclass
class LeakRecord:
    name: str
    addresses: set[str] = field(default_factory=set)
    count: int = 0
    first_seen: float = 0.0
    last_seen: float = 0.0
    last_logged: float = float("-inf")


def answer_addresses(reply: bytes, qend: int) -> list[str]:
    """The A/AAAA addresses in a reply's answer section (any owner: CNAME chains count)."""
    ancount = (reply[6] << 8) | reply[7]
    pos = qend
    out = []
    n = len(reply)
    for _ in range(ancount):
        pos = skip_name(reply, pos)
        if pos + 10 > n:
            raise FormatError("truncated record")
        rtype = (reply[pos] << 8) | reply[pos + 1]
        rdlen = (reply[pos + 8] << 8) | reply[pos + 9]
        rdata = reply[pos + 10 : pos + 10 + rdlen]
        pos += 10 + rdlen
        if rtype == TYPE_A and rdlen == 4:
            out.append(str(ipaddress.IPv4Address(rdata)))
        elif rtype == TYPE_AAAA and rdlen == 16:
            out.append(str(ipaddress.IPv6Address(rdata)))
    return out


class LeakDetector:
    def __init__(self, settings: Leaks, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.suffixes = tuple(encode_name(s) for s in settings.suffixes)
        self.networks = [ipaddress.ip_network(r) for r in settings.ranges]
        self.names: OrderedDict[str, LeakRecord] = OrderedDict()
        self.total = 0  # answers that leaked

    def watches(self, qname: bytes) -> bool:
        """Cheap pre-check on the lower-cased wire qname: is it under a watched suffix?"""
        return qname.endswith(self.suffixes)

    def inspect(self, qname: bytes, reply: bytes, qend: int) -> list[str]:
        """Record and log the conflicting addresses in a forwarded reply; return them."""
        try:
            addresses = answer_addresses(reply, qend)
        except (FormatError, IndexError, ValueError):
            return []
        leaked = [a for a in addresses if any(ipaddress.ip_address(a) in n for n in self.networks)]
        if not leaked:
            return []
        self.total += 1
        now = self.clock()
        name = decode_name(qname)
        record = self.names.pop(name, None) or LeakRecord(name=name, first_seen=now)
        self.names[name] = record
        while len(self.names) > MAX_NAMES:
            self.names.popitem(last=False)
        record.count += 1
        record.last_seen = now
        for address in leaked:
            if len(record.addresses) >= MAX_ADDRESSES:
                break
            record.addresses.add(address)
        if now - record.last_logged >= self.settings.interval:
            record.last_logged = now
            log.warning(
                "leak: %s resolved upstream to %s, inside %s; own this name in a service "
                "(seen %d times)",
                name.rstrip("."),
                ",".join(sorted(record.addresses)),
                ",".join(self.settings.ranges),
                record.count,
            )
        return leaked

    def snapshot(self) -> list[dict[str, object]]:
        return [
            {
                "name": r.name,
                "addresses": sorted(r.addresses),
                "count": r.count,
                "first_seen": r.first_seen,
                "last_seen": r.last_seen,
            }
            for r in reversed(self.names.values())
        ]

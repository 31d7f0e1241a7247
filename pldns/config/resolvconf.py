"""Turn the configured upstream list into addresses, reading resolv.conf where asked."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from pathlib import Path

from pldns.config import Config
from pldns.config.dns import RESOLV_CONF
from pldns.config.schema import ConfigError
from pldns.dns.settings import HostPort


def parse_resolv_conf(text: str) -> list[str]:
    """The `nameserver` addresses of a resolv.conf, in order (zone ids like %eth0 dropped)."""
    servers = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            host = fields[1].split("%", 1)[0]
            try:
                servers.append(str(ipaddress.ip_address(host)))
            except ValueError:
                continue
    return servers


def is_local_address(host: str) -> bool:
    """True if this host owns the address (binding to it works), so it may be pldns itself."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.bind((host, 0))
        return True
    except OSError:
        return False


def would_loop(server: HostPort, listen: tuple[HostPort, ...]) -> bool:
    """Would a query to `server` come back to one of our own listeners?"""
    for own in listen:
        if own.port != server.port:
            continue
        if own.host == server.host:
            return True
        if ipaddress.ip_address(own.host).is_unspecified and (
            ipaddress.ip_address(server.host).is_loopback or is_local_address(server.host)
        ):
            return True
    return False


def upstream_addresses(
    config: Config, read: Callable[[str], str] = lambda p: Path(p).read_text()
) -> tuple[HostPort, ...]:
    """Expand `resolv.conf` entries, skipping our own listen addresses (a forwarding loop)."""
    out: list[HostPort] = []
    problems = []
    for index, entry in enumerate(config.upstreams):
        if isinstance(entry, HostPort):
            if would_loop(entry, config.listen):
                problems.append(f"upstreams[{index}]: {entry} is pldns's own listen address")
            elif entry not in out:
                out.append(entry)
            continue
        path = config.forward.resolv_conf
        try:
            servers = parse_resolv_conf(read(path))
        except OSError as err:
            problems.append(f"upstreams[{index}]: cannot read {path}: {err.strerror or err}")
            continue
        usable = [HostPort(s, 53) for s in servers]
        usable = [u for u in usable if not would_loop(u, config.listen) and u not in out]
        if not usable:
            problems.append(
                f"upstreams[{index}]: {RESOLV_CONF} ({path}) has no nameserver that is not "
                "pldns itself"
            )
        out.extend(usable)
    if problems:
        raise ConfigError(problems)
    return tuple(out)

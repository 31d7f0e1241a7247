"""The running proxy: builds the parts from a Config, starts the listeners, stops cleanly."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from pldns.acl import Acl
from pldns.config import Config, HostPort
from pldns.resolvconf import upstream_addresses
from pldns.resolver import Resolver
from pldns.server import Frontend, Listener, TcpConnection
from pldns.stats import Stats
from pldns.table import Addresses, RecordTable, build_table
from pldns.upstream import Forwarder

log = logging.getLogger("pldns")


def static_addresses(config: Config) -> dict[str, Addresses]:
    return {s.name: Addresses(s.static_v4, s.static_v6, "static") for s in config.services}


def table_for(config: Config, addresses: Mapping[str, Addresses]) -> RecordTable:
    domains = {s.name: s.domains for s in config.services}
    return build_table(domains, addresses, config.answers.ttl)


class App:
    """One pldns process: listeners, resolver, forwarder and their shared counters."""

    def __init__(self, config: Config, upstreams: tuple[HostPort, ...] | None = None) -> None:
        self.config = config
        self.stats = Stats()
        self.upstreams = upstream_addresses(config) if upstreams is None else upstreams
        table = table_for(config, static_addresses(config))
        self.resolver = Resolver(table, config.answers.when_unknown, self.stats)
        self.forwarder = Forwarder(self.upstreams, config.forward, self.stats)
        self.frontend = Frontend(
            self.resolver,
            self.forwarder,
            Acl(config.allow),
            config.deny,
            self.stats,
            config.forward.max_inflight,
        )
        self.listeners: list[Listener] = []
        self.connections: set[TcpConnection] = set()
        self.stopping = asyncio.Event()

    def swap_table(self, table: RecordTable) -> None:
        """Replace the owned-name table whole; queries in progress keep the one they read."""
        self.resolver.table = table

    async def start(self) -> None:
        try:
            for address in self.config.listen:
                listener = Listener(address)
                await listener.start(self.frontend, self.config.tcp, self.connections)
                self.listeners.append(listener)
        except OSError:
            self.close()
            raise
        log.info(
            "serving on %s, forwarding to %s, %d owned names",
            ", ".join(str(a) for a in self.config.listen),
            ", ".join(str(u) for u in self.upstreams),
            len(self.resolver.table.names),
        )

    async def run(self) -> None:
        await self.start()
        try:
            await self.stopping.wait()
        finally:
            await self.stop()

    def request_stop(self) -> None:
        self.stopping.set()

    async def stop(self, drain: float = 5.0) -> None:
        """Stop accepting, give in-flight queries `drain` seconds to finish, close."""
        for listener in self.listeners:
            if listener.tcp is not None:
                listener.tcp.close()
        tasks = set(self.frontend.tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=drain)
        self.close()

    def close(self) -> None:
        for listener in self.listeners:
            listener.close()
        self.listeners.clear()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        self.forwarder.close()

"""The running proxy: builds the parts from a Config, starts the listeners, stops cleanly."""

from __future__ import annotations

import asyncio
import logging

from pldns.acl import Acl
from pldns.config import Config, HostPort
from pldns.resolvconf import upstream_addresses
from pldns.resolver import Resolver
from pldns.server import Frontend, Listener, TcpConnection
from pldns.snapshot import FileSink, SnapshotSink
from pldns.source import EndpointSource, FileSource
from pldns.sourceconfig import SOURCE_FILE, SOURCE_PRIVATELINK
from pldns.stats import Stats
from pldns.sync import Syncer, SyncState
from pldns.table import RecordTable
from pldns.upstream import Forwarder

log = logging.getLogger("pldns")


def make_source(config: Config) -> EndpointSource | None:
    if config.sync.source == SOURCE_PRIVATELINK:
        from pldns.privatelink import PrivateLinkSource  # the SDK is imported only when used

        return PrivateLinkSource(config.privatelink, config.region, config.services)
    if config.sync.source == SOURCE_FILE:
        return FileSource(config.sync.file)
    return None


def make_sinks(config: Config) -> list[SnapshotSink]:
    return [FileSink(config.sync.snapshot)] if config.sync.snapshot else []


class App:
    """One pldns process: listeners, resolver, forwarder and their shared counters."""

    def __init__(self, config: Config, upstreams: tuple[HostPort, ...] | None = None) -> None:
        self.config = config
        self.stats = Stats()
        self.upstreams = upstream_addresses(config) if upstreams is None else upstreams
        self.resolver = Resolver(RecordTable(), config.answers.when_unknown, self.stats)
        self.sync_state = SyncState()
        self.syncer = Syncer(
            config, make_source(config), self.swap_table, make_sinks(config), self.sync_state
        )
        self.syncer.start_static()
        if config.sync.snapshot:
            self.syncer.load_snapshot(config.sync.snapshot)
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
        self.sync_task: asyncio.Task[None] | None = None

    def swap_table(self, table: RecordTable) -> None:
        """Replace the owned-name table whole; queries in progress keep the one they read."""
        self.resolver.table = table

    async def start(self) -> None:
        if self.syncer.source is not None and self.syncer.source.kind == SOURCE_FILE:
            await self.syncer.round()  # a node resolver serves the mounted file from the start
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
        if self.syncer.source is not None:
            self.sync_task = asyncio.get_running_loop().create_task(
                self.syncer.run(self.stopping), name="sync"
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
        if self.sync_task is not None:
            self.sync_task.cancel()
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

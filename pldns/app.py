"""The running proxy: builds the parts from a Config, starts them, reconfigures, stops.

`App` owns the DNS side (listeners, resolver, forwarder, sync). Process concerns (signals,
the HTTP endpoint, lame duck, the config file watch) live in pldns.supervisor.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter

from pldns import logs
from pldns.config import Config
from pldns.config.resolvconf import upstream_addresses
from pldns.config.sync import SOURCE_FILE, SOURCE_PRIVATELINK
from pldns.dns.acl import Acl
from pldns.dns.answer import Resolver
from pldns.dns.cache import PacketCache
from pldns.dns.cacheflow import CacheFlow
from pldns.dns.connection import TcpConnection
from pldns.dns.forwarder import Forwarder
from pldns.dns.leak import LeakDetector
from pldns.dns.listeners import Listener
from pldns.dns.pipeline import Frontend
from pldns.dns.querylog import QueryLog
from pldns.dns.settings import HostPort
from pldns.dns.stats import Stats
from pldns.dns.table import RecordTable
from pldns.sync.loop import Syncer, SyncState
from pldns.sync.snapshot import FileSink, SnapshotSink
from pldns.sync.source import EndpointSource, FileSource
from pldns.sync.task import supervise

log = logging.getLogger("pldns")

DRAIN_POLL = 0.01


def make_source(config: Config) -> EndpointSource | None:
    if config.sync.source == SOURCE_PRIVATELINK:
        from pldns.sync.privatelink import PrivateLinkSource  # the SDK is imported only when used

        return PrivateLinkSource(config.privatelink, config.region, config.services)
    if config.sync.source == SOURCE_FILE:
        return FileSource(config.sync.file, config.region)
    return None


def make_sinks(config: Config) -> list[SnapshotSink]:
    return [FileSink(config.sync.snapshot)] if config.sync.snapshot else []


def config_version(config: Config, raw: bytes | None = None) -> str:
    """A short stable id of a config: the file's bytes when known, else its parsed value."""
    return hashlib.sha256(raw if raw is not None else repr(config).encode()).hexdigest()[:12]


def _sync_inputs(config: Config) -> tuple[object, ...]:
    return (config.region, config.services, config.answers, config.sync, config.privatelink)


def source_identity(config: Config) -> tuple[object, ...]:
    """What defines where addresses come from; a timeout, proxy or page size does not."""
    pl = config.privatelink
    return (
        config.sync.source,
        config.sync.file,
        pl.vpc_id,
        pl.region or config.region,
        pl.endpoint,
        config.region,
    )


class App:
    """One pldns process: listeners, resolver, forwarder, sync and their shared counters.

    With `workers` > 1 the parent is a `pldns.workers.PoolApp` (sync, HTTP, no listeners)
    and each worker an App with `reuse_port` set and no sync of its own.
    """

    reuse_port = False  # SO_REUSEPORT on the listeners (a worker among several)
    serves_dns = True  # False in the parent of workers: it binds no listener

    def __init__(
        self,
        config: Config,
        upstreams: tuple[HostPort, ...] | None = None,
        config_path: str | None = None,
        version: str | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.config_version = version or config_version(config)
        self.config_loaded_at = time.time()
        self.started_at = time.time()
        self.reloads: Counter[str] = Counter()
        self.stats = Stats()
        self.sync_state = SyncState()
        self.upstreams = upstream_addresses(config) if upstreams is None else upstreams
        self.resolver = Resolver(
            RecordTable(), config.answers.when_unknown, self.stats, config.forward.max_udp_size
        )
        self.cache = PacketCache(config.cache)
        self.syncer = self._new_syncer(config, None)
        self.leaks = LeakDetector(config.leaks) if config.leaks.enabled else None
        self.forwarder = Forwarder(self.upstreams, config.forward, self.stats)
        self.frontend = Frontend(
            self.resolver,
            self.forwarder,
            Acl(config.allow, (a.host for a in config.listen)),
            config.deny,
            self.stats,
            config.forward.max_inflight,
            leaks=self.leaks,
            querylog=QueryLog(config.log.queries) if config.log.queries > 0 else None,
            tcp=config.tcp,
        )
        self._set_cache(config)
        self.listeners: list[Listener] = []
        self.connections: set[TcpConnection] = set()
        self.stopping = asyncio.Event()
        self.sync_task: asyncio.Task[None] | None = None
        self.lame_duck = False
        self.shutting_down = False

    # -- building --------------------------------------------------------------------------

    def _new_syncer(self, config: Config, previous: Syncer | None) -> Syncer:
        """A syncer for `config`, carrying over the previous one's synced addresses.

        The addresses are always carried (for the services still synced): a reload never
        drops to an empty table. A new source (kind, file, VPC, region, endpoint) replaces
        them at its first good round; the empty rules of the sync loop still apply.
        """
        logs.learn_credentials(config.privatelink.credentials.file)
        syncer = Syncer(
            config, make_source(config), self.swap_table, make_sinks(config), self.sync_state
        )
        if previous is not None and previous.fed and syncer.source is not None:
            names = syncer.synced_names()
            syncer.fed = {k: v for k, v in previous.fed.items() if k in names}
            syncer._published = dict(previous._published)
            if source_identity(config) != source_identity(previous.config):
                log.info("sync source changed; serving the previous addresses until it answers")
            syncer.install(self.sync_state.origin or "static", self.sync_state.data_time)
            return syncer
        syncer.start_static()
        if config.sync.snapshot:
            syncer.load_snapshot(config.sync.snapshot)
        return syncer

    def swap_table(self, table: RecordTable) -> None:
        """Replace the owned-name table whole; queries in progress keep the one they read.

        Names that became owned lose their cache entries (they are answered locally now), and
        so do cached CNAME chains when a name became owned or got its first addresses: the
        chain may end there, and must end at the owned answer now (dns/cname.py).
        """
        old = self.resolver.table.names
        self.resolver.table = table
        added = [name for name in table.names if name not in old]
        if added and self.cache.drop_names(frozenset(added)):
            log.info("dropped cached answers for %d newly owned name(s)", len(added))
        known = [
            name
            for name, owned in table.names.items()
            if owned.known and not (name in old and old[name].known)
        ]
        if known and self.cache.drop_chains():
            log.info("dropped cached CNAME chains: %d name(s) now answered here", len(known))

    def _set_cache(self, config: Config) -> None:
        """Turn the cache hook on or off; a disabled cache is emptied (memory back)."""
        self.cache.configure(config.cache)
        if not config.cache.enabled:
            self.cache.flush()
            self.frontend.cache = None
        elif self.frontend.cache is None:
            self.frontend.cache = CacheFlow(self.frontend, self.cache)

    def flush_cache(self) -> int:
        """Drop every cached answer (POST /cache/flush); how many there were."""
        count = self.cache.flush()
        log.info("cache flushed: %d entries dropped", count)
        return count

    # -- running ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self._first_file_round()
        await self._start_serving()
        log.info(
            "serving on %s, forwarding to %s, %d owned names (%s)",
            ", ".join(str(a) for a in self.config.listen),
            ", ".join(str(u) for u in self.upstreams),
            len(self.resolver.table.names),
            self._origin_text(),
        )
        self._start_sync()

    def _origin_text(self) -> str:
        """Where the served addresses come from; before the first sync, say so (not "static")."""
        origin = self.sync_state.origin or "static"
        source = self.config.sync.source
        if source != "static" and origin == "static":
            return (
                f"no {source} data yet: answers.when_unknown "
                f"({self.config.answers.when_unknown}) until the first sync"
            )
        return origin

    async def _start_serving(self) -> None:
        await self.forwarder.open()
        try:
            for address in self.config.listen:
                listener = Listener(address, self.reuse_port)
                await listener.start(self.frontend, self.connections)
                self.listeners.append(listener)
        except OSError:
            self.close()
            raise

    def open_connections(self) -> int:
        return len(self.connections)

    def cache_entries(self) -> int:
        """Answers in the packet cache (of every worker, in the parent of `workers: N`)."""
        return len(self.cache)

    def worker_counts(self) -> tuple[int, int]:
        """DNS processes running, and how many times one was restarted (one process: 1, 0)."""
        return 1, 0

    async def _first_file_round(self) -> None:
        if self.syncer.source is not None and self.syncer.source.kind == SOURCE_FILE:
            await self.syncer.round()  # a node resolver serves the mounted file from the start

    def _start_sync(self) -> None:
        """The sync loop, supervised: if it ever ends it is logged, counted and restarted."""
        if self.syncer.source is not None:
            self.sync_task = asyncio.get_running_loop().create_task(
                supervise(
                    "sync",
                    lambda: self.syncer.run(self.stopping),
                    self.stopping,
                    self.sync_state.task,
                ),
                name="sync",
            )

    def table_state(self) -> tuple[bool, str]:
        """The owned-name table as its own condition (not readiness unless opted in)."""
        if self.syncer.source is None:
            return True, "static"
        task = self.sync_state.task
        if self.sync_task is not None and not task.running and task.restarts:
            return False, f"sync task restarting after: {task.last_crash}"
        if not self.resolver.table.loaded:
            return False, "no table loaded yet (waiting for the snapshot, file or first sync)"
        return True, "loaded"

    def ready(self) -> tuple[bool, str]:
        """Readiness: listening and able to answer, not shutting down.

        An unsynced owned name is answered per answers.when_unknown, so a missing table does
        not make the process unable to answer; sync.ready_requires_table brings back the
        gate on a loaded table for those who want it.
        """
        if self.lame_duck or self.shutting_down:
            return False, "shutting down"
        if not self.listeners:
            return False, "listeners not bound"
        if self.config.sync.ready_requires_table:
            ok, why = self.table_state()
            if not ok:
                return False, why
        return True, "ready"

    async def run(self) -> None:
        await self.start()
        try:
            await self.stopping.wait()
        finally:
            await self.stop(self.config.lifecycle.drain)

    def request_stop(self) -> None:
        self.stopping.set()

    async def stop(self, drain: float = 5.0) -> None:
        """Stop accepting, give in-flight queries `drain` seconds to finish, then close."""
        self.shutting_down = True
        self.stopping.set()
        if self.sync_task is not None:
            self.sync_task.cancel()
        self.frontend.accepting = False
        for listener in self.listeners:
            listener.stop_accepting()
        if self.stats.inflight:
            log.info("draining %d in-flight queries (up to %gs)", self.stats.inflight, drain)
            end = time.monotonic() + drain
            while self.stats.inflight and time.monotonic() < end:
                await asyncio.sleep(DRAIN_POLL)
            if self.stats.inflight:
                log.warning(
                    "%d queries still in flight after %gs, dropped", self.stats.inflight, drain
                )
        self.close()

    def close(self) -> None:
        for listener in self.listeners:
            listener.close()
        self.listeners.clear()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        if self.frontend.cache is not None:
            self.frontend.cache.close()
        self.forwarder.close()

    # -- reconfiguring ---------------------------------------------------------------------

    async def apply(self, new: Config, version: str | None = None) -> None:
        """Switch to a new config without a restart; on error nothing changes and it raises.

        Listeners that stay keep running; new ones are bound before anything is swapped.
        """
        old = self.config
        upstreams = upstream_addresses(new)  # ConfigError: keep the old config
        if self.serves_dns:
            await self._apply_listeners(new)
        if upstreams != self.upstreams or new.forward != old.forward:
            retired = self.forwarder
            self.forwarder = Forwarder(upstreams, new.forward, self.stats)
            if self.serves_dns:
                await self.forwarder.open()
            self.frontend.forwarder = self.forwarder
            self.upstreams = upstreams
            # Queries already sent on the old sockets finish within their deadline.
            asyncio.get_running_loop().call_later(old.forward.deadline + 1, retired.close)
        self._apply_rest(old, new)
        if _sync_inputs(new) != _sync_inputs(old):
            if self.sync_task is not None:
                self.sync_task.cancel()
                self.sync_task = None
            self.syncer = self._new_syncer(new, self.syncer)
            await self._first_file_round()
            self._start_sync()
        self.config_version = version or config_version(new)
        self.config_loaded_at = time.time()

    async def _apply_listeners(self, new: Config) -> None:
        kept = {lst.address: lst for lst in self.listeners if lst.address in new.listen}
        added: list[Listener] = []
        try:
            for address in new.listen:
                if address not in kept:
                    listener = Listener(address, self.reuse_port)
                    await listener.start(self.frontend, self.connections)
                    added.append(listener)
        except OSError:
            for listener in added:
                listener.close()
            raise
        for listener in self.listeners:
            if listener.address not in kept:
                listener.close()
        self.listeners = [*kept.values(), *added]

    def _apply_rest(self, old: Config, new: Config) -> None:
        if new.workers != old.workers:
            log.warning("workers: a new count takes effect at the next start")
        fe = self.frontend
        if new.allow != old.allow or new.listen != old.listen:
            fe.acl = Acl(new.allow, (a.host for a in new.listen))
        fe.deny, fe.max_inflight, fe.tcp = new.deny, new.forward.max_inflight, new.tcp
        fe.querylog = QueryLog(new.log.queries) if new.log.queries > 0 else None
        if new.leaks != old.leaks:
            self.leaks = LeakDetector(new.leaks) if new.leaks.enabled else None
            fe.leaks = self.leaks
        self.resolver.when_unknown = new.answers.when_unknown
        self.resolver.max_udp_size = new.forward.max_udp_size
        if new.cache != old.cache:
            self._set_cache(new)
        self.config = new

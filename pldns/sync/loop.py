"""The sync loop: fetch addresses from a source, build a new table, swap it, persist it.

A failed round keeps the table being served (last known good) and is counted; the next
round comes sooner (capped backoff with jitter, never sooner than a throttling
retry_after). It never publishes less than it knows:

- a partial failure keeps the old addresses of the services it touched;
- a service that had addresses and now has none keeps them for `sync.keep_rounds` good
  rounds (logged), in the served table as in the snapshot;
- a round that finds no address at all for any service is refused (the table and the
  snapshot stay as they were) and counted as an `invalid` failure;
- a new process or Lease term first reads what is published (`adopt_published`).

Every good round confirms the data (`data_time`), and an unchanged snapshot is republished
every `sync.heartbeat` intervals with a fresh `generated_at`: nodes tell a live syncer with
stable addresses from a dead one by the snapshot's age.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from pldns import logs
from pldns.config import Config
from pldns.config.sync import SOURCE_FILE
from pldns.dns.backoff import capped_backoff
from pldns.dns.table import Addresses, RecordTable, build_table
from pldns.sync.snapshot import Snapshot, SnapshotError, SnapshotSink, decode, encode, read
from pldns.sync.source import EndpointSource, SourceError, SourceResult
from pldns.sync.task import TaskHealth

log = logging.getLogger("pldns.sync")

FIRST_RETRY = 2.0


@dataclass
class SyncState:
    """What the operations side shows: when it last worked, what went wrong, how old it is."""

    source: str = "static"
    attempts: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    consecutive_failures: int = 0
    last_attempt: float | None = None
    last_success: float | None = None
    last_error: str = ""
    last_error_at: float | None = None
    last_duration: float = 0.0
    origin: str = ""  # where the served table came from: static | snapshot | privatelink | file
    data_time: float | None = None  # when the served data was produced
    snapshot_writes: int = 0
    snapshot_errors: int = 0
    partial: dict[str, str] = field(default_factory=dict)  # endpoint -> error, last round
    held: dict[str, int] = field(default_factory=dict)  # service -> rounds kept without IPs
    refused_empty: int = 0  # rounds that found no address at all (refused)
    task: TaskHealth = field(default_factory=TaskHealth)  # the supervised sync task

    def age(self, now: float | None = None) -> float | None:
        if self.data_time is None:
            return None
        return max(0.0, (time.time() if now is None else now) - self.data_time)


def static_addresses(config: Config) -> dict[str, Addresses]:
    return {
        s.name: Addresses(s.static_v4, s.static_v6, "static") for s in config.services if s.static
    }


def table_for(config: Config, addresses: Mapping[str, Addresses], loaded: bool) -> RecordTable:
    domains = {s.name: s.domains for s in config.services}
    return build_table(
        domains, addresses, config.answers.ttl, loaded=loaded, ptr=config.answers.ptr
    )


class Syncer:
    """Owns the served addresses for one config; `publish` receives each new table."""

    def __init__(
        self,
        config: Config,
        source: EndpointSource | None,
        publish: Callable[[RecordTable], None],
        sinks: Sequence[SnapshotSink] = (),
        state: SyncState | None = None,
        rand: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.clock = clock
        self.source = source
        self.publish = publish
        self.sinks = list(sinks)
        self.state = state or SyncState()
        self.state.source = source.kind if source else "static"
        self.rand = rand
        self.static = static_addresses(config)
        self.fed: dict[str, Addresses] = {}  # addresses from the source (or its snapshot)
        # Per sink: the body last published (without its time) and when (wall clock).
        self._published: dict[str, tuple[bytes, float]] = {}
        self._last_failure: SourceError | None = None
        self._last_key: tuple[str, str] | None = None
        self.interval = (
            config.sync.poll if config.sync.source == SOURCE_FILE else config.sync.interval
        )

    # -- building and swapping -------------------------------------------------------------

    def addresses(self) -> dict[str, Addresses]:
        return {**self.fed, **self.static}

    def install(self, origin: str, data_time: float | None) -> RecordTable:
        loaded = self.source is None or bool(self.fed) or origin != "static"
        table = table_for(self.config, self.addresses(), loaded)
        self.publish(table)
        self.state.origin = origin
        self.state.data_time = data_time
        return table

    def start_static(self) -> RecordTable:
        return self.install("static", time.time())

    @property
    def heartbeat(self) -> float:
        """Seconds after which an unchanged snapshot is published again (fresh time)."""
        return self.config.sync.heartbeat * self.interval

    def synced_names(self) -> set[str]:
        return {s.name for s in self.config.services if not s.static}

    def check_region(self, snap: Snapshot, where: str) -> None:
        if snap.region != self.config.region:
            raise SnapshotError(
                f"{where} is for region {snap.region!r}, this config is for {self.config.region!r}"
            )

    def load_snapshot(self, path: str) -> bool:
        """Serve from the last-known-good file at start; a bad file is reported, never fatal."""
        if not os.path.lexists(path):  # the first start: nothing to warn about
            log.info("no snapshot at %s yet: it is written after the first good sync", path)
            return False
        try:
            snap = read(path)
            self.check_region(snap, path)
        except SnapshotError as err:
            log.warning("snapshot %s not used: %s", path, err)
            self.state.snapshot_errors += 1
            return False
        names = self.synced_names()
        self.fed = {k: v for k, v in snap.services.items() if k in names}
        self.install("snapshot", snap.generated_at)
        log.info("serving from snapshot %s (%.0fs old, %d services)", path, snap.age, len(self.fed))
        return True

    async def adopt_published(self) -> bool:
        """Take what the sinks hold now (ConfigMap, --out file) as the previous state.

        A new process or Lease term knows nothing in memory; what the nodes are serving is
        what was published. Services published with addresses are merged over what this
        process already had; what each sink holds also counts as already published there
        (the heartbeat continues from its generated_at). Unreadable or foreign data is
        logged and skipped; it never stops the syncer.
        """
        adopted = False
        names = self.synced_names()
        for sink in self.sinks:
            reader = getattr(sink, "read", None)
            if reader is None:
                continue
            try:
                data = await reader()
                if data is None:
                    continue
                snap = decode(data, origin="snapshot")
                self.check_region(snap, sink.name)
            except SnapshotError as err:
                log.warning("published snapshot in %s not adopted: %s", sink.name, err)
                continue
            except Exception as err:  # the API is down: start from what we have
                log.warning(
                    "could not read the published snapshot from %s: %s",
                    sink.name,
                    logs.redact(str(err)),
                )
                continue
            known = {k: v for k, v in snap.services.items() if k in names and v.known}
            if known:
                self.fed = {**self.fed, **known}
                self.state.data_time = max(self.state.data_time or 0.0, snap.generated_at)
                adopted = True
                log.info(
                    "adopted the published snapshot from %s (%.0fs old, %d services)",
                    sink.name,
                    max(0.0, self.clock() - snap.generated_at),
                    len(known),
                )
            self._published[sink.name] = (_body(snap), snap.generated_at)
        if adopted:
            self.install("snapshot", self.state.data_time)
        return adopted

    # -- one round -----------------------------------------------------------------------

    async def round(self) -> bool:
        """One fetch; True if it succeeded (or nothing changed), False if it failed."""
        assert self.source is not None
        st = self.state
        st.attempts += 1
        started = time.monotonic()
        st.last_attempt = time.time()
        try:
            result = await self.source.fetch()
        except SourceError as err:
            self._failed(err)
            return False
        except Exception as err:  # a bug or an SDK surprise must not stop the loop
            log.exception("sync round failed unexpectedly")
            self._failed(SourceError("client", f"{type(err).__name__}: {err}"))
            return False
        finally:
            st.last_duration = time.monotonic() - started
        if result is not None and not await self._apply(result):
            return False
        if st.consecutive_failures:
            log.info("sync recovered after %d failed rounds", st.consecutive_failures)
        st.consecutive_failures = 0
        self._last_key = None
        st.last_success = time.time()
        return True

    async def _apply(self, result: SourceResult) -> bool:
        """Install and persist a round's result; False if it was refused (all empty)."""
        fed = dict(result.addresses)
        for name in result.incomplete:
            if name in self.fed:
                fed[name] = self.fed[name]  # partial failure: keep what we had
        for endpoint, error in result.errors.items():
            log.warning(
                "endpoint %s skipped this round, kept its last addresses: %s",
                endpoint,
                logs.redact(error),
            )
        if not _known(fed) and _known(self.fed):
            self.state.refused_empty += 1
            self._failed(
                SourceError(
                    "invalid",
                    "the round found no usable address for any service; "
                    "the table and the snapshot keep the previous addresses",
                    code="empty",
                )
            )
            return False
        if self.source is not None and self.source.kind != SOURCE_FILE:
            self._hold(fed)  # a file is the syncer's decision: its holds are already in it
        self.state.partial = {k: logs.redact(v) for k, v in result.errors.items()}
        changed = _content(fed) != _content(self.fed)
        self.fed = fed
        confirmed = result.generated_at or self.clock()
        if changed or self.state.origin in ("", "static", "snapshot"):
            self.install(self.source.kind if self.source else "static", confirmed)
            if changed:
                log.info("table updated: %s", summarize(self.addresses()))
        self.state.data_time = confirmed  # the source confirmed the data now, changed or not
        if self.state.origin != "file" or self.config.sync.snapshot:
            await self._persist()
        return True

    def _hold(self, fed: dict[str, Addresses]) -> None:
        """A service that had addresses and now has none keeps them for keep_rounds rounds."""
        keep = self.config.sync.keep_rounds
        held = self.state.held
        for name, old in self.fed.items():
            new = fed.get(name)
            if not old.known or (new is not None and new.known):
                held.pop(name, None)
                continue
            rounds = held.get(name, 0) + 1
            if rounds <= keep:
                held[name] = rounds
                fed[name] = old
                log.warning(
                    "service %s: no usable address this round; keeping its %d previous "
                    "addresses (round %d of %d, sync.keep_rounds)",
                    name, len(old.v4) + len(old.v6), rounds, keep,
                )  # fmt: skip
            else:
                held.pop(name, None)
                log.warning(
                    "service %s: no usable address for %d rounds; dropping its addresses "
                    "(its names now follow answers.when_unknown)",
                    name, rounds,
                )  # fmt: skip
        for name in list(held):
            if name not in fed:
                held.pop(name)

    async def _persist(self) -> None:
        now = self.clock()
        snap = Snapshot(self.config.region, self.fed, self.state.data_time or now)
        if snap.empty:
            log.warning("not writing a snapshot without a single address (kept the previous one)")
            return
        body = _body(snap)
        data = encode(snap)
        for sink in self.sinks:  # one failing sink does not stop the others
            last = self._published.get(sink.name)
            if last is not None and last[0] == body and now - last[1] < self.heartbeat:
                continue
            try:
                await sink.publish(data)
            except Exception as err:  # disk full, API down: the next round tries again
                self.state.snapshot_errors += 1
                log.warning("snapshot publish to %s failed: %s", sink.name, logs.redact(str(err)))
                continue
            self.state.snapshot_writes += 1
            self._published[sink.name] = (body, now)

    def _failed(self, err: SourceError) -> None:
        self._last_failure = err
        st = self.state
        st.failures[err.reason] += 1
        st.consecutive_failures += 1
        if err.reason == "auth":
            logs.learn_credentials(self.config.privatelink.credentials.file)
        message = logs.redact(str(err))
        if err.key != self._last_key:
            level = logging.ERROR if err.reason == "auth" else logging.WARNING
            log.log(level, "sync failed, still serving the last good table: %s", message)
        self._last_key = err.key
        st.last_error = message
        st.last_error_at = time.time()

    # -- the loop ------------------------------------------------------------------------

    def delay(self, ok: bool) -> float:
        """Seconds to the next round: the interval, or a backoff after failures.

        Failures retry after 2, 4, 8, ... seconds up to the interval (capped_backoff: any
        number of failures in a row gives a finite wait); an auth error waits
        the whole interval (it will not fix itself in seconds); a throttling retry_after is
        a floor. Every wait is spread by +-jitter so a fleet does not call in step.
        """
        jitter = self.config.sync.jitter
        spread = 1 + jitter * (2 * self.rand() - 1)
        err = self._last_failure
        if ok or err is None:
            return self.interval * spread
        n = self.state.consecutive_failures
        if err.reason == "auth":
            base = self.interval
        else:
            base = capped_backoff(max(1, n), FIRST_RETRY, self.interval)
        wait = base * spread
        if err.retry_after:
            wait = max(wait, err.retry_after * (1 + jitter * self.rand()))
        return wait

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            ok = await self.round()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.delay(ok))


def _content(addresses: Mapping[str, Addresses]) -> dict[str, tuple[object, ...]]:
    """What is served, ignoring where it was read from (a snapshot vs the API)."""
    return {
        k: (sorted(v.v4), sorted(v.v6), sorted(tuple(sorted(d.items())) for d in v.detail))
        for k, v in addresses.items()
    }


def _known(addresses: Mapping[str, Addresses]) -> bool:
    return any(a.known for a in addresses.values())


def _body(snap: Snapshot) -> bytes:
    """The snapshot without its time: what decides whether it changed."""
    return encode(Snapshot(snap.region, snap.services, 0))


def summarize(addresses: Mapping[str, Addresses]) -> str:
    parts = []
    for name, addrs in sorted(addresses.items()):
        ips = ",".join((*addrs.v4, *addrs.v6)) or "none"
        parts.append(f"{name}={ips}")
    return " ".join(parts)

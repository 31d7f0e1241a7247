"""The sync loop: fetch addresses from a source, build a new table, swap it, persist it.

A failed round keeps the table being served (last known good) and is counted; the next
round comes sooner (backoff with jitter, never sooner than a throttling retry_after). A
partial failure keeps the old addresses of the services it touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from pldns.config import Config
from pldns.config.sync import SOURCE_FILE
from pldns.dns.table import Addresses, RecordTable, build_table
from pldns.sync.snapshot import Snapshot, SnapshotError, SnapshotSink, encode, read
from pldns.sync.source import EndpointSource, SourceError, SourceResult

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
    ) -> None:
        self.config = config
        self.source = source
        self.publish = publish
        self.sinks = list(sinks)
        self.state = state or SyncState()
        self.state.source = source.kind if source else "static"
        self.rand = rand
        self.static = static_addresses(config)
        self.fed: dict[str, Addresses] = {}  # addresses from the source (or its snapshot)
        self._published: bytes | None = None
        self._last_failure: SourceError | None = None
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

    def load_snapshot(self, path: str) -> bool:
        """Serve from the last-known-good file at start; a bad file is reported, never fatal."""
        try:
            snap = read(path)
        except SnapshotError as err:
            log.warning("snapshot %s not used: %s", path, err)
            self.state.snapshot_errors += 1
            return False
        names = {s.name for s in self.config.services if not s.static}
        self.fed = {k: v for k, v in snap.services.items() if k in names}
        self.install("snapshot", snap.generated_at)
        log.info("serving from snapshot %s (%.0fs old, %d services)", path, snap.age, len(self.fed))
        return True

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
        if result is not None:
            await self._apply(result)
        if st.consecutive_failures:
            log.info("sync recovered after %d failed rounds", st.consecutive_failures)
        st.consecutive_failures = 0
        st.last_success = time.time()
        return True

    async def _apply(self, result: SourceResult) -> None:
        fed = dict(result.addresses)
        for name in result.incomplete:
            if name in self.fed:
                fed[name] = self.fed[name]  # partial failure: keep what we had
        for endpoint, error in result.errors.items():
            log.warning(
                "endpoint %s skipped this round, kept its last addresses: %s", endpoint, error
            )
        self.state.partial = dict(result.errors)
        changed = _content(fed) != _content(self.fed)
        self.fed = fed
        if changed or self.state.origin in ("", "static", "snapshot"):
            self.install(
                self.source.kind if self.source else "static", result.generated_at or time.time()
            )
            if changed:
                log.info("table updated: %s", summarize(self.addresses()))
        if self.state.origin != "file" or self.config.sync.snapshot:
            await self._persist()

    async def _persist(self) -> None:
        snap = Snapshot(self.config.region, self.fed, self.state.data_time or time.time())
        if snap.empty:
            log.warning("not writing a snapshot without a single address (kept the previous one)")
            return
        body = encode(Snapshot(snap.region, snap.services, 0))
        if body == self._published:
            return
        data = encode(snap)
        for sink in self.sinks:
            try:
                await sink.publish(data)
                self.state.snapshot_writes += 1
            except Exception as err:  # disk full, API down: the next change tries again
                self.state.snapshot_errors += 1
                log.warning("snapshot publish to %s failed: %s", sink.name, err)
                return
        self._published = body

    def _failed(self, err: SourceError) -> None:
        self._last_failure = err
        st = self.state
        st.failures[err.reason] += 1
        st.consecutive_failures += 1
        message = str(err)
        if message != st.last_error:
            level = logging.ERROR if err.reason == "auth" else logging.WARNING
            log.log(level, "sync failed, still serving the last good table: %s", message)
        st.last_error = message
        st.last_error_at = time.time()

    # -- the loop ------------------------------------------------------------------------

    def delay(self, ok: bool) -> float:
        """Seconds to the next round: the interval, or a backoff after failures.

        Failures retry after 2, 4, 8, ... seconds up to the interval; an auth error waits
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
            base = min(self.interval, FIRST_RETRY * 2 ** max(0, n - 1))
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


def summarize(addresses: Mapping[str, Addresses]) -> str:
    parts = []
    for name, addrs in sorted(addresses.items()):
        ips = ",".join((*addrs.v4, *addrs.v6)) or "none"
        parts.append(f"{name}={ips}")
    return " ".join(parts)

"""The Prometheus exporter: every metric pldns exports, read from plain counters at scrape time.

The hot path bumps ints and Counters (see stats.py); nothing there touches prometheus-client.
When /metrics is scraped, `AppCollector.collect` walks the running App and yields metric
families built fresh from those values. `METRICS` is the one documented list: a test checks
that exactly these families are exported and that the README's Metrics table names them all.

Labels are bounded: protocol, query type (a fixed list, else "other"), RCODE, reply source,
the configured upstreams and services, and closed sets of failure reasons. No client address,
query name or secret ever becomes a label.
"""

from __future__ import annotations

import platform
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

import pldns
import pldns.dns
from pldns.dns.answer import SOURCE_CACHE, SOURCE_LOCAL, SOURCE_OWNED, SOURCE_UPSTREAM
from pldns.dns.cache import KINDS as CACHE_KINDS
from pldns.dns.cname import OUTCOMES as CNAME_OUTCOMES
from pldns.dns.stats import Histogram
from pldns.metrics_forward import (
    FORWARD_METRICS,
    PROBE_RESULTS,
    TCP_CLOSE_REASONS,
    TRANSPORTS,
    TRUNCATION_REASONS,
)
from pldns.sync.source import REASONS as SYNC_FAILURE_REASONS

if TYPE_CHECKING:
    from pldns.app import App
    from pldns.sync.loop import SyncState

# The classic text format: every name here is a legacy (ASCII) name, so the body is 0.0.4 text.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

COUNTER = "counter"
GAUGE = "gauge"
HISTOGRAM = "histogram"
INFO = "info"

# Label values that are always exported (as 0 until they happen), so alerts and rate()
# work from the first scrape.
SOURCES = (SOURCE_OWNED, SOURCE_UPSTREAM, SOURCE_CACHE, SOURCE_LOCAL)
FORWARD_FAILURE_REASONS = ("timeout", "error", "servfail", "refused")
DROP_REASONS = ("runt", "response", "acl", "send")

RELOAD_RESULTS = ("success", "failure")

# name -> (type, help). The order is the order of docs/metrics.md and the README table.
METRICS: dict[str, tuple[str, str]] = {
    "pldns_dns_requests_total": (
        COUNTER,
        "DNS queries received, by transport (udp, tcp) and query type (other for rare types).",
    ),
    "pldns_dns_responses_total": (
        COUNTER,
        "DNS replies sent, by RCODE and source (owned: from the table, upstream: relayed, "
        "local: an error made here).",
    ),
    "pldns_dns_request_duration_seconds": (
        HISTOGRAM,
        "Time from receiving a query to sending its reply, by source.",
    ),
    "pldns_dns_inflight": (GAUGE, "Queries being forwarded right now (waiting for an upstream)."),
    "pldns_dns_inflight_rejected_total": (
        COUNTER,
        "Queries to forward answered REFUSED because forward.max_inflight were already in flight.",
    ),
    "pldns_dns_dropped_total": (
        COUNTER,
        "Packets that got no reply, by reason (runt, response, acl).",
    ),
    "pldns_tcp_connections_total": (COUNTER, "TCP connections accepted."),
    "pldns_tcp_rejected_total": (
        COUNTER,
        "TCP connections closed at once because tcp.max_connections were open.",
    ),
    "pldns_tcp_open_connections": (GAUGE, "TCP connections open right now."),
    **FORWARD_METRICS,
    "pldns_cache_entries": (GAUGE, "Replies in the packet cache, by kind."),
    "pldns_cache_hits_total": (COUNTER, "Queries answered from a fresh cache entry, by kind."),
    "pldns_cache_misses_total": (COUNTER, "Cacheable queries with no fresh cache entry."),
    "pldns_cache_stale_total": (COUNTER, "Queries answered from an expired entry (RFC 8767)."),
    "pldns_cache_prefetches_total": (COUNTER, "Entries refreshed before they expired, by kind."),
    "pldns_cache_evictions_total": (COUNTER, "Entries dropped to stay within cache.size."),
    "pldns_cache_coalesced_total": (COUNTER, "Queries that waited for an identical one upstream."),
    "pldns_sync_attempts_total": (COUNTER, "Sync rounds started."),
    "pldns_sync_failures_total": (
        COUNTER,
        "Sync rounds that failed, by reason (throttled, auth, timeout, network, server, "
        "client, invalid).",
    ),
    "pldns_sync_last_success_timestamp_seconds": (
        GAUGE,
        "Unix time of the last successful sync round (0 if none yet).",
    ),
    "pldns_sync_duration_seconds": (GAUGE, "How long the last sync round took."),
    "pldns_sync_consecutive_failures": (
        GAUGE,
        "Sync rounds failed in a row (0 after a success).",
    ),
    "pldns_sync_task_restarts_total": (COUNTER, "Times the sync task ended and was restarted."),
    "pldns_sync_task_running": (GAUGE, "1 while the sync task runs, else 0."),
    "pldns_sync_held_services": (GAUGE, "Services kept at old addresses (sync.keep_rounds)."),
    "pldns_snapshot_age_seconds": (
        GAUGE,
        "Seconds since the source last confirmed the served data (the syncer's generated_at "
        "for a node); -1 if unknown.",
    ),
    "pldns_snapshot_writes_total": (COUNTER, "Snapshots written (last-known-good persisted)."),
    "pldns_snapshot_errors_total": (
        COUNTER,
        "Snapshots that could not be written or read.",
    ),
    "pldns_owned_ips": (
        GAUGE,
        "Addresses served for each configured service, by address family (ipv4, ipv6).",
    ),
    "pldns_owned_names": (GAUGE, "Names answered from the owned-name table."),
    "pldns_table_loaded": (GAUGE, "1 when the owned-name table holds data from its source."),
    "pldns_config_reloads_total": (
        COUNTER,
        "Config reloads, by result (success, failure: the old config is kept).",
    ),
    "pldns_config_last_reload_timestamp_seconds": (
        GAUGE,
        "Unix time the config in use was loaded.",
    ),
    "pldns_leaks_total": (
        COUNTER,
        "Forwarded answers for a watched suffix that pointed into a conflict range.",
    ),
    "pldns_leaked_names": (GAUGE, "Distinct names seen leaking (up to the remembered limit)."),
    "pldns_cname_chains_total": (
        COUNTER,
        "Forwarded answers with a CNAME chain into an owned name, by outcome (rewritten: the "
        "owned answer replaced the chain's end; signed: left alone), or a chain that loops or "
        "runs past 16 links (loop: left alone).",
    ),
    "pldns_ready": (GAUGE, "1 if /readyz reports ready, else 0."),
    "pldns_workers": (GAUGE, "DNS worker processes running (1 without workers)."),
    "pldns_worker_restarts_total": (
        COUNTER,
        "Worker processes that ended unexpectedly and were started again.",
    ),
    "pldns_build_info": (INFO, "pldns and Python versions, data plane build (always 1)."),
}


def _cumulative(hist: Histogram) -> list[tuple[str, float]]:
    """Per-bucket counts (the last is the +Inf overflow) -> Prometheus cumulative buckets."""
    out: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip(hist.buckets, hist.counts, strict=False):
        running += count
        out.append((_le(bound), float(running)))
    out.append(("+Inf", float(hist.count)))
    return out


def _le(bound: float) -> str:
    return repr(float(bound))


def _ordered(seen: Iterable[str], always: Iterable[str]) -> list[str]:
    """The always-exported label values, then any others seen, in a stable order."""
    first = list(always)
    return first + sorted(set(seen) - set(first))


class AppCollector(Collector):
    """Builds every family in METRICS from a running App when the registry is scraped."""

    def __init__(self, app: App) -> None:
        self.app = app

    def describe(self) -> Iterator[Metric]:
        """Names only, so registering never calls collect() on a half-built App."""
        for name, (kind, doc) in METRICS.items():
            yield _family(name, kind, doc, [])

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for family in (
            *self._dns(),
            *self._forward(),
            *self._cache(),
            *self._sync(),
            *self._table(),
            *self._process(),
        ):
            families[family.name] = family
        for name in METRICS:
            yield families[_family_key(name)]

    # -- DNS side ------------------------------------------------------------------------

    def _dns(self) -> Iterator[Metric]:
        app = self.app
        stats = app.stats
        requests = _counter("pldns_dns_requests_total", ["proto", "type"])
        for (proto, qtype), n in sorted(stats.requests.items()):
            requests.add_metric([proto, qtype], n)
        yield requests
        responses = _counter("pldns_dns_responses_total", ["rcode", "source"])
        for (rcode, source), n in sorted(stats.responses.items()):
            responses.add_metric([rcode, source], n)
        yield responses
        duration = _histogram("pldns_dns_request_duration_seconds", ["source"])
        for source in _ordered(stats.duration, SOURCES):
            hist = stats.duration.get(source) or Histogram()
            duration.add_metric([source], _cumulative(hist), hist.total)
        yield duration
        yield _gauge("pldns_dns_inflight", stats.inflight)
        yield _counter("pldns_dns_inflight_rejected_total", value=stats.rejected_inflight)
        dropped = _counter("pldns_dns_dropped_total", ["reason"])
        for reason in _ordered(stats.dropped, DROP_REASONS):
            dropped.add_metric([reason], stats.dropped.get(reason, 0))
        yield dropped
        yield _counter("pldns_tcp_connections_total", value=stats.tcp_connections)
        yield _counter("pldns_tcp_rejected_total", value=stats.tcp_rejected)
        yield _gauge("pldns_tcp_open_connections", app.open_connections())
        closed = _counter("pldns_tcp_closed_total", ["reason"])
        for reason in _ordered(stats.tcp_closed, TCP_CLOSE_REASONS):
            closed.add_metric([reason], stats.tcp_closed.get(reason, 0))
        yield closed
        truncated = _counter("pldns_dns_truncated_total", ["reason"])
        for reason in _ordered(stats.truncated, TRUNCATION_REASONS):
            truncated.add_metric([reason], stats.truncated.get(reason, 0))
        yield truncated

    def _forward(self) -> Iterator[Metric]:
        requests = _counter("pldns_forward_requests_total", ["upstream"])
        failures = _counter("pldns_forward_failures_total", ["upstream", "reason"])
        duration = _histogram("pldns_forward_request_duration_seconds", ["upstream"])
        healthy = _gauge("pldns_forward_healthy", labels=["upstream"])
        tcp_healthy = _gauge("pldns_forward_tcp_healthy", labels=["upstream"])
        probes = _counter("pldns_forward_probes_total", ["upstream", "transport", "result"])
        last_probe = _gauge("pldns_forward_last_probe_timestamp_seconds", labels=["upstream"])
        tcp_opened = _counter("pldns_forward_tcp_connections_total", ["upstream"])
        for upstream in self.app.forwarder.upstreams:
            name = upstream.name
            st = upstream.stats
            requests.add_metric([name], st.requests)
            for reason in _ordered(st.failures, FORWARD_FAILURE_REASONS):
                failures.add_metric([name, reason], st.failures.get(reason, 0))
            duration.add_metric([name], _cumulative(st.duration), st.duration.total)
            healthy.add_metric([name], 1 if st.healthy else 0)
            tcp_healthy.add_metric([name], 1 if st.tcp_healthy else 0)
            for transport in TRANSPORTS:
                for result in PROBE_RESULTS:
                    probes.add_metric([name, transport, result], st.probes[(transport, result)])
            last_probe.add_metric([name], st.last_probe)
            tcp_opened.add_metric([name], st.tcp_opened)
        yield from (requests, failures, duration, healthy, tcp_healthy, probes, last_probe)
        yield tcp_opened

    def _cache(self) -> Iterator[Metric]:
        cache = self.app.cache
        for name, counts in (
            ("pldns_cache_entries", cache.kinds),
            ("pldns_cache_hits_total", cache.hits),
            ("pldns_cache_stale_total", cache.stale),
            ("pldns_cache_prefetches_total", cache.prefetches),
            ("pldns_cache_evictions_total", cache.evictions),
        ):
            gauge = METRICS[name][0] == GAUGE
            family: Metric = _gauge(name, labels=["kind"]) if gauge else _counter(name, ["kind"])
            for kind in _ordered(counts, CACHE_KINDS):
                family.add_metric([kind], counts.get(kind, 0))  # type: ignore[attr-defined]
            yield family
        yield _counter("pldns_cache_misses_total", value=cache.misses)
        yield _counter("pldns_cache_coalesced_total", value=cache.coalesced)

    # -- sync and the table --------------------------------------------------------------

    def _sync(self) -> Iterator[Metric]:
        yield from sync_families(self.app.sync_state)

    def _table(self) -> Iterator[Metric]:
        table = self.app.resolver.table
        services: Mapping[str, Any] = table.services
        configured = [s.name for s in self.app.config.services]
        owned = _gauge("pldns_owned_ips", labels=["service", "family"])
        for name in _ordered(services, configured):
            addrs = services.get(name)
            owned.add_metric([name, "ipv4"], len(addrs.v4) if addrs else 0)
            owned.add_metric([name, "ipv6"], len(addrs.v6) if addrs else 0)
        yield owned
        yield _gauge("pldns_owned_names", len(table.names))
        yield _gauge("pldns_table_loaded", 1 if self.app.table_state()[0] else 0)

    # -- the process ---------------------------------------------------------------------

    def _process(self) -> Iterator[Metric]:
        app = self.app
        reloads = _counter("pldns_config_reloads_total", ["result"])
        for result in _ordered(app.reloads, RELOAD_RESULTS):
            reloads.add_metric([result], app.reloads.get(result, 0))
        yield reloads
        yield _gauge("pldns_config_last_reload_timestamp_seconds", app.config_loaded_at or 0)
        leaks = app.leaks  # None when leak detection is off
        yield _counter("pldns_leaks_total", value=leaks.total if leaks is not None else 0)
        yield _gauge("pldns_leaked_names", len(leaks.names) if leaks is not None else 0)
        chains = _counter("pldns_cname_chains_total", ["outcome"])
        for outcome in _ordered(app.stats.chains, CNAME_OUTCOMES):
            chains.add_metric([outcome], app.stats.chains.get(outcome, 0))
        yield chains
        ready, _reason = app.ready()
        yield _gauge("pldns_ready", 1 if ready else 0)
        running, restarts = app.worker_counts()
        yield _gauge("pldns_workers", running)
        yield _counter("pldns_worker_restarts_total", value=restarts)
        yield _build_info()


def sync_families(st: SyncState) -> Iterator[Metric]:
    """The sync and snapshot families: a resolver's, or `pldns sync`'s own."""
    yield _counter("pldns_sync_attempts_total", value=st.attempts)
    failures = _counter("pldns_sync_failures_total", ["reason"])
    for reason in _ordered(st.failures, SYNC_FAILURE_REASONS):
        failures.add_metric([reason], st.failures.get(reason, 0))
    yield failures
    yield _gauge("pldns_sync_last_success_timestamp_seconds", st.last_success or 0)
    yield _gauge("pldns_sync_duration_seconds", st.last_duration)
    yield _gauge("pldns_sync_consecutive_failures", st.consecutive_failures)
    yield _counter("pldns_sync_task_restarts_total", value=st.task.restarts)
    yield _gauge("pldns_sync_task_running", 1 if st.task.running else 0)
    yield _gauge("pldns_sync_held_services", len(st.held))
    age = st.age()
    yield _gauge("pldns_snapshot_age_seconds", -1 if age is None else age)
    yield _counter("pldns_snapshot_writes_total", value=st.snapshot_writes)
    yield _counter("pldns_snapshot_errors_total", value=st.snapshot_errors)


# -- family constructors -------------------------------------------------------------------


def _build_info() -> Metric:
    info = InfoMetricFamily("pldns_build", METRICS["pldns_build_info"][1], labels=[])
    labels = {"version": pldns.__version__, "python": platform.python_version()}
    info.add_metric([], {**labels, "data_plane": pldns.dns.build()})  # compiled | python
    return info


def _help(name: str) -> str:
    return METRICS[name][1]


def _counter(
    name: str, labels: list[str] | None = None, value: float | None = None
) -> CounterMetricFamily:
    if value is not None:
        return CounterMetricFamily(name, _help(name), value=value)
    return CounterMetricFamily(name, _help(name), labels=labels or [])


def _gauge(
    name: str, value: float | None = None, labels: list[str] | None = None
) -> GaugeMetricFamily:
    if value is not None:
        return GaugeMetricFamily(name, _help(name), value=value)
    return GaugeMetricFamily(name, _help(name), labels=labels or [])


def _histogram(name: str, labels: list[str]) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, _help(name), labels=labels)


def _family(name: str, kind: str, doc: str, labels: list[str]) -> Metric:
    if kind == COUNTER:
        return CounterMetricFamily(name, doc, labels=labels)
    if kind == GAUGE:
        return GaugeMetricFamily(name, doc, labels=labels)
    if kind == HISTOGRAM:
        return HistogramMetricFamily(name, doc, labels=labels)
    return InfoMetricFamily(_family_key(name), doc, labels=labels)


def _family_key(name: str) -> str:
    """The family name prometheus-client uses internally (suffixes _total/_info stripped)."""
    kind = METRICS[name][0]
    if kind == COUNTER and name.endswith("_total"):
        return name[: -len("_total")]
    if kind == INFO and name.endswith("_info"):
        return name[: -len("_info")]
    return name


# -- rendering -----------------------------------------------------------------------------

_registries: weakref.WeakKeyDictionary[App, CollectorRegistry] = weakref.WeakKeyDictionary()


def registry_for(app: App) -> CollectorRegistry:
    """A private registry holding one AppCollector per App (made on first use, then reused)."""
    registry = _registries.get(app)
    if registry is None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(AppCollector(app))
        _registries[app] = registry
    return registry


class SyncCollector(Collector):
    """What `pldns sync` exports: the sync families, readiness and build info."""

    def __init__(self, state: SyncState, ready: Callable[[], bool]) -> None:
        self.state = state
        self.ready = ready

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        yield from sync_families(self.state)
        yield _gauge("pldns_ready", 1 if self.ready() else 0)
        yield _build_info()


def render_sync(state: SyncState, ready: Callable[[], bool]) -> tuple[bytes, str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SyncCollector(state, ready))
    return generate_latest(registry), CONTENT_TYPE


def render(app: App) -> tuple[bytes, str]:
    """The /metrics body in the Prometheus text format, and its content type.

    Labelled 0.0.4 (not prometheus-client's newer default) so every scraper understands it.
    """
    return generate_latest(registry_for(app)), CONTENT_TYPE

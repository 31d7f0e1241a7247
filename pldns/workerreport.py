"""What a worker of `workers: N` reports to the parent, and how the parent adds reports up.

Counters add up across workers (and across the workers that ended: a restart never makes a
counter go down); an upstream is healthy only if every worker finds it healthy.
"""

from __future__ import annotations

import os
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

from pldns.app import App
from pldns.dns.leak import MAX_ADDRESSES, MAX_NAMES, LeakRecord
from pldns.dns.stats import Histogram, Stats, UpstreamStats


@dataclass
class WorkerReport:
    pid: int
    serial: int  # the table's serial, to show that every worker serves the same table
    owned_names: int
    ready: bool
    stats: Stats
    open_connections: int
    last_errors: dict[str, str]  # upstream -> last error
    cache: dict[str, Any]
    cache_entries: int
    leaks_total: int = 0
    leaks: list[LeakRecord] = field(default_factory=list)


def report_of(app: App) -> WorkerReport:
    cache = app.cache
    leaks = app.leaks
    return WorkerReport(
        pid=os.getpid(),
        serial=app.resolver.table.serial,
        owned_names=len(app.resolver.table.names),
        ready=app.ready()[0],
        stats=app.stats,
        open_connections=app.open_connections(),
        last_errors={up.name: up.last_error for up in app.forwarder.upstreams},
        cache={
            "kinds": cache.kinds,
            "hits": cache.hits,
            "stale": cache.stale,
            "prefetches": cache.prefetches,
            "evictions": cache.evictions,
            "misses": cache.misses,
            "coalesced": cache.coalesced,
        },
        cache_entries=len(cache),
        leaks_total=leaks.total if leaks is not None else 0,
        leaks=list(leaks.names.values()) if leaks is not None else [],
    )


def _merge_hist(into: Histogram, other: Histogram) -> None:
    if len(into.counts) == len(other.counts):
        into.counts = [a + b for a, b in zip(into.counts, other.counts, strict=True)]
    into.total += other.total
    into.count += other.count


def merge_stats(parts: list[Stats]) -> Stats:
    """One Stats for all workers: counts add up; an upstream is healthy if healthy in all."""
    out = Stats()
    for st in parts:
        out.requests.update(st.requests)
        out.responses.update(st.responses)
        out.dropped.update(st.dropped)
        out.chains.update(st.chains)
        for source, hist in st.duration.items():
            _merge_hist(out.duration.setdefault(source, Histogram()), hist)
        out.rejected_inflight += st.rejected_inflight
        out.inflight += st.inflight
        out.tcp_connections += st.tcp_connections
        out.tcp_rejected += st.tcp_rejected
        out.tcp_closed.update(st.tcp_closed)
        out.truncated.update(st.truncated)
        for name, up in st.upstreams.items():
            into = out.upstreams.setdefault(name, UpstreamStats())
            into.requests += up.requests
            into.failures.update(up.failures)
            _merge_hist(into.duration, up.duration)
            into.healthy = into.healthy and up.healthy
            into.tcp_healthy = into.tcp_healthy and up.tcp_healthy
            into.probes.update(up.probes)
            into.tcp_opened += up.tcp_opened
            if up.last_probe > into.last_probe:
                into.last_probe, into.last_probe_ok = up.last_probe, up.last_probe_ok
    return out


def merge_leaks(parts: list[list[LeakRecord]]) -> OrderedDict[str, LeakRecord]:
    merged: dict[str, LeakRecord] = {}
    for records in parts:
        for r in records:
            m = merged.get(r.name)
            if m is None:
                merged[r.name] = LeakRecord(
                    r.name, set(r.addresses), r.count, r.first_seen, r.last_seen
                )
                continue
            m.addresses = set(sorted(m.addresses | r.addresses)[:MAX_ADDRESSES])
            m.count += r.count
            m.first_seen = min(m.first_seen, r.first_seen)
            m.last_seen = max(m.last_seen, r.last_seen)
    newest = sorted(merged.values(), key=lambda r: r.last_seen)[-MAX_NAMES:]
    return OrderedDict((r.name, r) for r in newest)


def merge_reports_into_one(reports: list[WorkerReport]) -> WorkerReport:
    """Reports folded into one (the counts of workers that ended)."""
    cache: dict[str, Any] = {}
    for name in ("kinds", "hits", "stale", "prefetches", "evictions"):
        total: Counter[str] = Counter()
        for r in reports:
            total.update(r.cache[name])
        cache[name] = total
    for name in ("misses", "coalesced"):
        cache[name] = sum(r.cache[name] for r in reports)
    return WorkerReport(
        pid=0,
        serial=0,
        owned_names=0,
        ready=False,
        stats=merge_stats([r.stats for r in reports]),
        open_connections=sum(r.open_connections for r in reports),
        last_errors={},
        cache=cache,
        cache_entries=sum(r.cache_entries for r in reports),
        leaks_total=sum(r.leaks_total for r in reports),
        leaks=list(merge_leaks([r.leaks for r in reports]).values()),
    )

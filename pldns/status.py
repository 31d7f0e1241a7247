"""The status view: what /status returns, and `pldns status`, the table a person reads when paged.

`build_status` turns a running App into a JSON-ready dict (no secrets: addresses, zones,
endpoint ids, error messages). `render_status` draws that dict as a short text report;
`status_command` fetches /status and /readyz from a running pldns and prints either.
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TextIO

import pldns
import pldns.dns
from pldns.config.dns import Service
from pldns.dns.table import Addresses
from pldns.dns.wire import escape_text
from pldns.tabletext import Paint, align

if TYPE_CHECKING:
    from pldns.app import App

HTTP_TIMEOUT = 3.0
MAX_BODY = 4 << 20
STATIC_ZONE = "static"  # the zone column for configured static addresses
NO_ZONE = "-"  # an address from a source that did not say which zone it is in

EXIT_READY = 0
EXIT_NOT_READY = 1
EXIT_UNREACHABLE = 2

_GREEN, _RED, _YELLOW, _BOLD, _DIM = "32", "31", "33", "1", "2"


# -- the document ----------------------------------------------------------------------------


def build_status(app: App, now: float | None = None) -> dict[str, Any]:
    """Everything `pldns status` shows, as plain JSON values (times are Unix seconds)."""
    now = time.time() if now is None else now
    ready, reason = app.ready()
    table = app.resolver.table
    leaks = app.leaks
    return {
        "role": "resolver",
        "version": pldns.__version__,
        "data_plane": pldns.dns.build(),
        "now": now,
        "uptime": max(0.0, now - app.started_at),
        "ready": ready,
        "reason": reason,
        "lame_duck": app.lame_duck,
        "config": {
            "path": app.config_path,
            "version": app.config_version,
            "loaded_at": app.config_loaded_at,
            "region": app.config.region,
        },
        "listeners": [str(a) for a in app.config.listen],
        "owned_names": len(table.names),
        "table": _table_condition(app),
        "services": [_service(s, table.services.get(s.name)) for s in app.config.services],
        "sync": _sync(app, now),
        "upstreams": [
            {
                "name": up.name,
                "healthy": up.stats.healthy,
                "tcp_healthy": up.stats.tcp_healthy,
                "last_probe": up.stats.last_probe or None,
                "last_probe_ok": up.stats.last_probe_ok if up.stats.last_probe else None,
                "requests": up.stats.requests,
                "failures": dict(sorted(up.stats.failures.items())),
                "last_error": up.last_error,
            }
            for up in app.forwarder.upstreams
        ],
        "leak_detection": leaks is not None,
        "leaks": leaks.snapshot() if leaks is not None else [],
        "cache": _cache(app),
    }


def _cache(app: App) -> dict[str, Any]:
    """The packet cache at a glance: size, limit, hit ratio (fresh hits / cacheable queries)."""
    cache = app.cache
    hits = sum(cache.hits.values())
    lookups = hits + cache.misses
    return {
        "enabled": app.frontend.cache is not None,
        "entries": app.cache_entries(),
        "size": cache.settings.size,
        "hits": hits,
        "misses": cache.misses,
        "hit_ratio": round(hits / lookups, 4) if lookups else 0.0,
        "stale": sum(cache.stale.values()),
        "prefetches": sum(cache.prefetches.values()),
        "evictions": sum(cache.evictions.values()),
        "coalesced": cache.coalesced,
    }


def _service(service: Service, addrs: Addresses | None) -> dict[str, Any]:
    """One configured service: its names and its addresses grouped by zone."""
    addrs = addrs or Addresses(origin="")
    facts = {d.get("ip", ""): d for d in addrs.detail}
    zones: dict[str, list[dict[str, str]]] = {}
    for ip in (*addrs.v4, *addrs.v6):
        fact = facts.get(ip, {})
        static = addrs.origin == "static" or ip in service.static
        zone = fact.get("zone") or (STATIC_ZONE if static else NO_ZONE)
        zones.setdefault(zone, []).append(
            {
                "ip": ip,
                "endpoint": fact.get("endpoint", ""),
                "eni": fact.get("eni", ""),
                "status": fact.get("status") or (STATIC_ZONE if static else ""),
            }
        )
    return {
        "name": service.name,
        "domains": list(service.domains),
        "origin": addrs.origin or "none",
        "zones": dict(sorted(zones.items())),
        "counts": {"ipv4": len(addrs.v4), "ipv6": len(addrs.v6), "zones": len(zones)},
    }


def _sync(app: App, now: float) -> dict[str, Any]:
    st = app.sync_state
    return {
        "source": st.source,
        "origin": st.origin,
        "interval": app.syncer.interval,
        "attempts": st.attempts,
        "last_attempt": st.last_attempt,
        "last_success": st.last_success,
        "last_duration": st.last_duration,
        "last_error": st.last_error,
        "last_error_at": st.last_error_at,
        "consecutive_failures": st.consecutive_failures,
        "failures": dict(sorted(st.failures.items())),
        "data_time": st.data_time,
        "age": st.age(now),
        "partial": dict(st.partial),
        "snapshot_writes": st.snapshot_writes,
        "snapshot_errors": st.snapshot_errors,
        "held": dict(st.held),
        "refused_empty": st.refused_empty,
        "task": {
            "running": st.task.running,
            "restarts": st.task.restarts,
            "last_crash": st.task.last_crash,
            "last_crash_at": st.task.last_crash_at,
        },
    }


def _table_condition(app: App) -> dict[str, Any]:
    """The owned-name table as a condition of its own (readiness does not wait for it)."""
    ok, reason = app.table_state()
    return {
        "loaded": ok,
        "reason": reason,
        "required_for_ready": app.config.sync.ready_requires_table,
    }


# -- the text view ---------------------------------------------------------------------------


def duration(seconds: float) -> str:
    """12s, 5m03s, 3h12m, 2d04h: short, and exact enough to act on."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _ago(ts: float | None, now: float) -> str:
    return "never" if ts is None else f"{duration(now - ts)} ago"


def _service_rows(doc: Mapping[str, Any]) -> list[list[tuple[str, tuple[str, ...]]]]:
    head = ("SERVICE", "DOMAINS", "ZONE", "IP", "ENDPOINT", "STATUS")
    rows: list[list[tuple[str, tuple[str, ...]]]] = [[(h, (_BOLD,)) for h in head]]
    for svc in doc.get("services", []):
        ips: list[tuple[str, str, str, str]] = [
            (zone, e["ip"], e.get("endpoint") or "-", e.get("status") or "-")
            for zone, entries in svc.get("zones", {}).items()
            for e in entries
        ]
        domains = list(svc.get("domains", []))
        for i in range(max(len(domains), len(ips), 1)):
            name = svc["name"] if i == 0 else ""
            domain = escape_text(str(domains[i])) if i < len(domains) else ""
            if i < len(ips):
                zone, ip, endpoint, status = ips[i]
                ok = status.lower() in ("connected", "static")
                cells = [(zone, ()), (ip, ()), (endpoint, ()), (status, () if ok else (_YELLOW,))]
            elif i == 0:
                cells = [("-", ()), ("no addresses", (_RED,)), ("", ()), ("", ())]
            else:
                cells = [("", ())] * 4
            rows.append([(name, ()), (domain, ()), *cells])
    return rows


def _sync_lines(sync: Mapping[str, Any], now: float, paint: Paint) -> list[str]:
    if sync.get("source", "static") == "static":
        return [f"{paint('SYNC', _BOLD)}      static addresses only (no sync source)"]
    age = sync.get("age")
    failing = int(sync.get("consecutive_failures") or 0)
    line = (
        f"{paint('SYNC', _BOLD)}      {sync['source']}: last success "
        f"{_ago(sync.get('last_success'), now)}, data age "
        f"{'unknown' if age is None else duration(age)} (served from {sync.get('origin') or '-'})"
    )
    if failing:
        line += ", " + paint(f"{failing} failed rounds in a row", _RED)
    lines = [line]
    if sync.get("last_error"):
        when = _ago(sync.get("last_error_at"), now)
        text = f"last error {when}: {sync['last_error']}"
        lines.append("          " + paint(text, _RED if failing else _YELLOW))
    for endpoint, error in sorted((sync.get("partial") or {}).items()):
        lines.append("          " + paint(f"partial: {endpoint}: {error}", _YELLOW))
    return lines


def _upstream_lines(upstreams: Sequence[Mapping[str, Any]], paint: Paint) -> list[str]:
    if not upstreams:
        return []
    width = max(len(u["name"]) for u in upstreams)
    lines = []
    for up in upstreams:
        health = paint("healthy", _GREEN) if up.get("healthy") else paint("DOWN   ", _RED)
        text = f"{paint('UPSTREAM', _BOLD)}  {up['name'].ljust(width)}  {health}  "
        text += f"{up.get('requests', 0)} queries"
        failures = {k: v for k, v in (up.get("failures") or {}).items() if v}
        if failures:
            text += ", failures: " + ", ".join(f"{k} {v}" for k, v in sorted(failures.items()))
        if up.get("tcp_healthy") is False:
            text += paint(", TCP down", _RED)
        if up.get("last_error") and not up.get("healthy"):
            text += paint(f", last error: {up['last_error']}", _RED)
        if up.get("last_probe"):
            result = "ok" if up.get("last_probe_ok") else "failed"
            text += f", last probe {result}"
        lines.append(text)
    return lines


def _leak_lines(doc: Mapping[str, Any], now: float, paint: Paint) -> list[str]:
    leaks = doc.get("leaks") or []
    if not doc.get("leak_detection", True):
        return [f"{paint('LEAKS', _BOLD)}     leak detection is off"]
    if not leaks:
        return [f"{paint('LEAKS', _BOLD)}     " + paint("no leaks seen", _GREEN)]
    lines = [
        paint(
            f"LEAKS     {len(leaks)} name(s) resolved upstream into the conflict range: "
            "own them in a service",
            _RED,
            _BOLD,
        )
    ]
    names = [escape_text(str(leak["name"])).rstrip(".") for leak in leaks]
    width = max(len(name) for name in names)
    for leak, name in zip(leaks, names, strict=True):
        addresses = ", ".join(leak.get("addresses") or [])
        seen = f"seen {leak.get('count', 0)}x, last {_ago(leak.get('last_seen'), now)}"
        lines.append("  " + paint(f"{name.ljust(width)}  -> {addresses}", _RED) + f"  ({seen})")
    return lines


def _cache_lines(cache: Mapping[str, Any] | None) -> list[str]:
    if not cache:
        return []
    if not cache.get("enabled"):
        return ["CACHE     off"]
    return [
        f"CACHE     {cache.get('entries', 0)}/{cache.get('size', 0)} entries, "
        f"hit ratio {100 * float(cache.get('hit_ratio') or 0):.1f}% "
        f"({cache.get('hits', 0)} hits, {cache.get('misses', 0)} misses), "
        f"{cache.get('stale', 0)} stale answers, {cache.get('evictions', 0)} evictions"
    ]


def verdict_text(doc: Mapping[str, Any], paint: Paint) -> str:
    """READY, or NOT READY with the reason: the first word of every status view."""
    if doc.get("ready"):
        return paint("READY", _GREEN, _BOLD)
    return paint(f"NOT READY: {doc.get('reason') or 'unknown'}", _RED, _BOLD)


def render_status(doc: Mapping[str, Any], color: bool) -> str:
    """The status document as text: the verdict first, then what it rests on. A syncer's
    document (role "syncer", from `pldns sync`) is drawn as a syncer."""
    if doc.get("role") == "syncer":
        from pldns.syncstatus import render_syncer

        return render_syncer(doc, color)
    paint = Paint(color)
    now = float(doc.get("now") or time.time())
    verdict = verdict_text(doc, paint)
    config = doc.get("config") or {}
    about = f"pldns {doc.get('version', '?')}, up {duration(float(doc.get('uptime') or 0))}"
    if config:
        about += f", config {config.get('path') or '(in memory)'} {config.get('version') or ''}"
        about = about.rstrip() + f", loaded {_ago(config.get('loaded_at'), now)}"
    lines = [f"{verdict}  {about}"]
    if doc.get("lame_duck"):
        lines.append(paint("lame duck: draining before shutdown", _YELLOW))
    lines.append("listening on " + (", ".join(doc.get("listeners") or []) or "nothing"))
    lines.append("")
    if doc.get("services"):
        lines.extend(align(_service_rows(doc), paint))
    else:
        lines.append("no services configured: every query is forwarded")
    lines.append("")
    lines.extend(_sync_lines(doc.get("sync") or {}, now, paint))
    lines.extend(_upstream_lines(doc.get("upstreams") or [], paint))
    lines.extend(_cache_lines(doc.get("cache")))
    lines.append("")
    lines.extend(_leak_lines(doc, now, paint))
    return "\n".join(lines) + "\n"


# -- the command -----------------------------------------------------------------------------


def _get(opener: urllib.request.OpenerDirector, url: str) -> tuple[int, bytes]:
    """(HTTP status, body); HTTP error statuses are answers too, not exceptions."""
    try:
        with opener.open(url, timeout=HTTP_TIMEOUT) as resp:
            return int(resp.status), resp.read(MAX_BODY)
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read(MAX_BODY)


def status_command(
    url: str, as_json: bool, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Print a running pldns's status; 0 ready, 1 not ready, 2 endpoint not reachable."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    base = url.rstrip("/")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        code, body = _get(opener, f"{base}/status")
        if code != 200:
            raise ValueError(f"HTTP {code}")
        doc = json.loads(body)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        ready_code, ready_body = _get(opener, f"{base}/readyz")
    except (OSError, ValueError, http.client.HTTPException) as problem:
        reason = getattr(problem, "reason", None) or problem
        print(
            f"pldns status: cannot read {base}/status: {reason}: is pldns running with its "
            "HTTP endpoint there? (--config FILE takes the address from http.listen)",
            file=err,
        )
        return EXIT_UNREACHABLE
    # /readyz is the verdict; a server without it (another status code): trust the document.
    ready = ready_code == 200 if ready_code in (200, 503) else bool(doc.get("ready"))
    if as_json:
        out.write(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    else:
        shown = dict(doc, ready=ready)
        if not ready and ready_code == 503:
            shown["reason"] = ready_body.decode("utf-8", "replace").strip() or doc.get("reason")
        color = out.isatty() and not os.environ.get("NO_COLOR")
        try:
            text = render_status(shown, color)
        except (KeyError, TypeError, ValueError, AttributeError) as problem:
            print(f"pldns status: unexpected /status document from {base}: {problem!r}", file=err)
            return EXIT_UNREACHABLE
        out.write(text)
    out.flush()
    return EXIT_READY if ready else EXIT_NOT_READY

"""The status of `pldns sync` (a syncer, no DNS listener): its /status document and the text
`pldns status` draws from it.

A syncer is not a resolver: what matters is its role and lease (is it the one publishing, and
if not, who is), when it last published and where, the services and IPs it last found, and
what failed. The resolver's view is pldns/status.py; `render_status` there hands a document
whose role is "syncer" to `render_syncer` here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pldns
from pldns.dns.table import Addresses
from pldns.status import (
    _BOLD,
    _GREEN,
    _RED,
    _YELLOW,
    _ago,
    _service,
    _service_rows,
    _sync_lines,
    duration,
    verdict_text,
)
from pldns.tabletext import Paint, align

if TYPE_CHECKING:
    from pldns.config import Config
    from pldns.sync.lease import LeaseElector
    from pldns.sync.loop import Syncer, SyncState

ROLE = "syncer"


def build_sync_status(
    config: Config,
    state: SyncState,
    ready: tuple[bool, str],
    elector: LeaseElector | None = None,
    syncer: Syncer | None = None,
    started_at: float | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """Everything `pldns status` shows about a syncer, as plain JSON values."""
    now = time.time() if now is None else now
    addresses: Mapping[str, Addresses] = syncer.addresses() if syncer is not None else {}
    published: Mapping[str, tuple[bytes, float]] = getattr(syncer, "_published", {}) or {}
    lease = None
    if elector is not None:
        observed = getattr(elector, "_observed", None) or ()
        lease = {
            "name": f"{getattr(elector, 'namespace', '?')}/{getattr(elector, 'lease', '?')}",
            "identity": elector.identity,
            "leader": elector.is_leader,
            "holder": (observed[0] if observed else None) or None,
            "terms": elector.terms,
        }
    return {
        "role": ROLE,
        "version": pldns.__version__,
        "now": now,
        "uptime": max(0.0, now - (started_at or now)),
        "ready": ready[0],
        "reason": ready[1],
        "leader": None if elector is None else elector.is_leader,  # kept for scripts
        "lease": lease,
        "config": {"region": config.region, "vpc_id": config.privatelink.vpc_id},
        "publish": {
            "sinks": [
                {"name": name, "last_publish": at}
                for name, (_body, at) in sorted(published.items())
            ],
            "writes": state.snapshot_writes,
            "errors": state.snapshot_errors,
        },
        "services": [_service(s, addresses.get(s.name)) for s in config.services],
        "sync": {
            **{k: v for k, v in vars(state).items() if k != "task"},
            "failures": dict(sorted(state.failures.items())),
            "task": vars(state.task),
            "interval": config.sync.interval,
            "age": state.age(now),
        },
    }


def _lease_line(lease: Mapping[str, Any] | None, paint: Callable[..., str]) -> str:
    head = paint("LEASE", _BOLD) + "     "
    if not lease:
        return head + "none (no --lease: this syncer always publishes)"
    me = lease.get("identity") or "?"
    if lease.get("leader"):
        text = paint(f"leader ({me})", _GREEN)
    else:
        holder = lease.get("holder")
        text = paint(f"standing by ({me}); leader: {holder or 'none yet'}", _YELLOW)
    return head + f"{lease.get('name', '?')}: {text}, {lease.get('terms', 0)} term(s) led here"


def _publish_line(publish: Mapping[str, Any], now: float, paint: Callable[..., str]) -> str:
    sinks = publish.get("sinks") or []
    head = paint("PUBLISH", _BOLD) + "   "
    if not sinks:
        text = "nothing published yet"
    else:
        text = ", ".join(f"{s['name']} {_ago(s.get('last_publish'), now)}" for s in sinks)
    text += f" ({publish.get('writes', 0)} writes"
    errors = int(publish.get("errors") or 0)
    text += ", " + paint(f"{errors} errors", _RED) + ")" if errors else ")"
    return head + text


def _failure_line(sync: Mapping[str, Any], paint: Callable[..., str]) -> str:
    failures = {k: v for k, v in (sync.get("failures") or {}).items() if v}
    head = paint("FAILURES", _BOLD) + "  "
    if not failures:
        return head + paint("none", _GREEN) + f" in {sync.get('attempts', 0)} rounds"
    counts = ", ".join(f"{k} {v}" for k, v in sorted(failures.items()))
    return head + paint(counts, _YELLOW) + f" in {sync.get('attempts', 0)} rounds"


def render_syncer(doc: Mapping[str, Any], color: bool) -> str:
    """A syncer's status document as text: verdict, lease, publishing, services, failures."""
    paint = Paint(color)
    now = float(doc.get("now") or time.time())
    verdict = verdict_text(doc, paint)
    config = doc.get("config") or {}
    about = f"pldns {doc.get('version', '?')} syncer (no DNS listener)"
    if doc.get("uptime") is not None:
        about += f", up {duration(float(doc.get('uptime') or 0))}"
    if config.get("region"):
        about += f", region {config['region']}"
    if config.get("vpc_id"):
        about += f", VPC {config['vpc_id']}"
    lines = [f"{verdict}  {about}", _lease_line(doc.get("lease"), paint)]
    lines.append(_publish_line(doc.get("publish") or {}, now, paint))
    lines.append("")
    if doc.get("services"):
        lines.extend(align(_service_rows(doc), paint))
    else:
        lines.append("no services known yet")
    lines.append("")
    sync = doc.get("sync") or {}
    lines.extend(_sync_lines(sync, now, paint))
    lines.append(_failure_line(sync, paint))
    return "\n".join(lines) + "\n"

"""`pldns status` of a syncer: drawn as a syncer (role, lease holder, last publish, services
and IPs, failures), never as a resolver that listens on nothing."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from pldns.config import parse_config
from pldns.dns.table import Addresses
from pldns.status import render_status
from pldns.sync.loop import SyncState
from pldns.syncstatus import build_sync_status

NOW = 1_800_000_000.0
CONFIG = parse_config(
    {
        "region": "cn-hangzhou",
        "upstreams": ["127.0.0.1:5399"],
        "sync": {"source": "privatelink"},
        "privatelink": {"vpc_id": "vpc-abc"},
        "services": {
            "eci": {
                "domains": ["eci-vpc.{region}.aliyuncs.com"],
                "privatelink": {"tags": {"s": "x"}},
            },
            "vpc": {
                "domains": ["vpc-vpc.{region}.aliyuncs.com"],
                "privatelink": {"tags": {"s": "x"}},
            },
        },
    }
)


class FakeSyncer:
    def __init__(self) -> None:
        detail = ({"ip": "10.0.0.1", "zone": "cn-hangzhou-h", "endpoint": "ep-1", "status": "Connected"},)  # fmt: skip
        self._published = {"configmap:pldns/pldns-snapshot": (b"{}", NOW - 30)}
        self._addresses = {"eci": Addresses(("10.0.0.1",), (), "privatelink", detail)}

    def addresses(self) -> dict[str, Addresses]:
        return self._addresses


class FakeElector:
    namespace, lease = "pldns", "pldns-sync"
    identity = "pldns-sync-b"
    terms = 0
    is_leader = False
    _observed = ("pldns-sync-a", "2026-12-01T17:00:00.000000Z", None, 15, 1)


def _doc(**kwargs: Any) -> dict[str, Any]:
    state = SyncState(source="privatelink", attempts=12, last_success=NOW - 30)
    state.failures = Counter({"timeout": 2, "auth": 0})
    state.snapshot_writes = 3
    doc = build_sync_status(CONFIG, state, (True, "ready"), started_at=NOW - 600, now=NOW, **kwargs)
    return json.loads(json.dumps(doc, default=str))  # what /status serves


def test_a_leader_shows_what_it_publishes_and_found() -> None:
    elector = FakeElector()
    elector.is_leader, elector.terms = True, 2
    text = render_status(_doc(elector=elector, syncer=FakeSyncer()), color=False)
    lines = text.splitlines()
    assert lines[0] == (
        "READY  pldns " + _doc()["version"] + " syncer (no DNS listener), up 10m00s, "
        "region cn-hangzhou, VPC vpc-abc"
    )
    assert lines[1] == "LEASE     pldns/pldns-sync: leader (pldns-sync-b), 2 term(s) led here"
    assert lines[2] == "PUBLISH   configmap:pldns/pldns-snapshot 30s ago (3 writes)"
    assert any(line.split()[:5] == ["eci", "eci-vpc.cn-hangzhou.aliyuncs.com", "cn-hangzhou-h", "10.0.0.1", "ep-1"] for line in lines), text  # fmt: skip
    assert any(line.split()[:2] == ["vpc", "vpc-vpc.cn-hangzhou.aliyuncs.com"] and "no addresses" in line for line in lines), text  # fmt: skip
    assert "FAILURES  timeout 2 in 12 rounds" in lines
    assert "listening on" not in text and "every query is forwarded" not in text


def test_a_standby_names_the_leader() -> None:
    text = render_status(_doc(elector=FakeElector()), color=False)
    assert "standing by (pldns-sync-b); leader: pldns-sync-a" in text
    assert "PUBLISH   nothing published yet (3 writes)" in text


def test_without_a_lease_and_the_old_minimal_document() -> None:
    assert "LEASE     none (no --lease: this syncer always publishes)" in render_status(
        _doc(), color=False
    )
    old = {"role": "syncer", "leader": None, "ready": False, "sync": {"source": "privatelink"}}
    text = render_status(old, color=False)
    assert text.startswith("NOT READY: unknown  pldns ? syncer"), text
    assert "no services known yet" in text

"""The shipped dashboard and alerts (deploy/monitoring): the alert rules pass `promtool check
rules` and behave as documented under `promtool test rules`, every dashboard query parses as
PromQL, and every metric either names is one pldns exports (METRICS, the README Metrics table,
and a real scrape of a resolver and of the syncer).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from pldns.app import App
from pldns.metrics import METRICS, render, render_sync
from pldns.sync.loop import SyncState
from tests.fakes.proc import REPO
from tests.test_sync import make_config
from tests.tools import tool

MONITORING = REPO / "deploy" / "monitoring"
RULES = MONITORING / "prometheusrule.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
METRIC = re.compile(r"\bpldns_[a-z0-9_]+\b")
ALERTS_REQUIRED = {
    "PldnsSyncFailing",  # syncer failing
    "PldnsSnapshotStale",  # snapshot stale
    "PldnsUpstreamsDown",  # upstream down
    "PldnsLeakSeen",  # leak seen
    "PldnsRefusedOverload",  # REFUSED from overload
}


def rule_groups() -> dict[str, Any]:
    doc = yaml.safe_load(RULES.read_text())
    assert doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["kind"] == "PrometheusRule"
    return doc["spec"]


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in doc["panels"] for t in p["targets"]]


def rule_exprs() -> list[str]:
    return [r["expr"] for g in rule_groups()["groups"] for r in g["rules"]]


def family(name: str) -> str:
    """A sample name -> its family: histogram series and the info suffix."""
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in METRICS:
            return name[: -len(suffix)]
    return name


def named_metrics() -> set[str]:
    text = "\n".join(rule_exprs() + dashboard_exprs())
    return {family(m) for m in METRIC.findall(text)}


def test_alerts_cover_what_the_issue_asks_for() -> None:
    names = {r["alert"] for g in rule_groups()["groups"] for r in g["rules"]}
    assert names >= ALERTS_REQUIRED, ALERTS_REQUIRED - names
    for group in rule_groups()["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]


def test_every_metric_named_exists_in_metrics_readme_and_a_scrape() -> None:
    names = named_metrics()
    assert len(names) >= 15, names
    unknown = names - set(METRICS)
    assert not unknown, f"not exported by pldns (pldns/metrics.py METRICS): {sorted(unknown)}"
    readme = (REPO / "README.md").read_text()
    for name in names:
        assert f"| `{name}` |" in readme, f"{name} is not in the README Metrics table"
    resolver = render(App(make_config(), upstreams=()))[0].decode()
    syncer = render_sync(SyncState(), lambda: True)[0].decode()
    exported = {family(m) for m in METRIC.findall(resolver + syncer)}
    missing = names - exported
    assert not missing, f"named but absent from a real scrape: {sorted(missing)}"


def test_promtool_check_rules(tmp_path: Path) -> None:
    promtool = tool("promtool")
    rules = tmp_path / "pldns.rules.yaml"
    rules.write_text(yaml.safe_dump(rule_groups()))
    done = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rule_exprs())} rules found" in done.stdout


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """Each panel query, with Grafana's variables filled in, as a recording rule: promtool
    parses every expression (a typo in a dashboard is otherwise found by a person, late)."""
    promtool = tool("promtool")
    rules = [
        {"record": f"pldns:dashboard:{i}",
         "expr": e.replace("$__rate_interval", "5m").replace("$instance", ".*")}
        for i, e in enumerate(dashboard_exprs())
    ]  # fmt: skip
    path = tmp_path / "dashboard.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


UNIT_TESTS = """
rule_files: [pldns.rules.yaml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      # A node whose syncer died: the snapshot age grows by 60 s a minute from 300 s.
      - series: 'pldns_snapshot_age_seconds{instance="node-1"}'
        values: '300+60x40'
      # A node whose syncer heartbeats: the age saws between 0 and 300 s.
      - series: 'pldns_snapshot_age_seconds{instance="node-2"}'
        values: '0 60 120 180 240 300 0 60 120 180 240 300 0 60 120 180 240 300 0 60 120 180 240 300 0 60 120 180 240 300'
      - series: 'pldns_forward_healthy{instance="node-1",upstream="10.0.0.2:53"}'
        values: '1 1 0 0 0 0 0 0'
      - series: 'pldns_dns_inflight_rejected_total{instance="node-1"}'
        values: '0 10 20 30 40 50 60 70 80 90 100'
      - series: 'pldns_tcp_rejected_total{instance="node-1"}'
        values: '0x10'
      - series: 'pldns_leaks_total{instance="node-1"}'
        values: '0 0 1 1 1'
    alert_rule_test:
      - eval_time: 15m
        alertname: PldnsSnapshotStale
        exp_alerts: []
      - eval_time: 20m
        alertname: PldnsSnapshotStale
        exp_alerts:
          - exp_labels: {severity: warning, instance: node-1}
            exp_annotations:
              summary: "pldns on node-1 serves data 25m 0s old"
      - eval_time: 4m
        alertname: PldnsUpstreamsDown
        exp_alerts:
          - exp_labels: {severity: critical, instance: node-1}
            exp_annotations: {summary: "pldns on node-1: every upstream is down"}
      - eval_time: 9m
        alertname: PldnsRefusedOverload
        exp_alerts:
          - exp_labels: {severity: warning, instance: node-1}
            exp_annotations: {summary: "pldns on node-1 refuses queries: overloaded"}
      - eval_time: 4m
        alertname: PldnsLeakSeen
        exp_alerts:
          - exp_labels: {severity: warning, instance: node-1}
            exp_annotations:
              summary: "pldns on node-1 forwarded an aliyuncs.com name that is not owned"
  - interval: 1m
    input_series:
      # The syncer: last success at t=0, then every round fails.
      - series: 'pldns_sync_last_success_timestamp_seconds{instance="syncer"}'
        values: '0x40'
      - series: 'pldns_sync_consecutive_failures{instance="syncer"}'
        values: '0+1x40'
    alert_rule_test:
      - eval_time: 16m
        alertname: PldnsSyncFailing
        exp_alerts: []
      - eval_time: 21m
        alertname: PldnsSyncFailing
        exp_alerts:
          - exp_labels: {severity: warning, instance: syncer}
            exp_annotations:
              summary: "pldns sync on syncer has failed for 15 minutes"
              description: "See pldns status / the log for sync.last_error (pldns_sync_failures_total by reason)."
"""


def test_promtool_test_rules_alerts_fire_as_documented(tmp_path: Path) -> None:
    promtool = tool("promtool")
    (tmp_path / "pldns.rules.yaml").write_text(yaml.safe_dump(rule_groups()))
    (tmp_path / "tests.yaml").write_text(UNIT_TESTS)
    done = subprocess.run([promtool, "test", "rules", "tests.yaml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("path", [RULES, DASHBOARD], ids=lambda p: p.name)
def test_monitoring_files_are_documented(path: Path) -> None:
    assert f"monitoring/{path.name}" in (REPO / "deploy" / "README.md").read_text()

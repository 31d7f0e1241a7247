"""The Prometheus exporter: an in-process App's plain counters, scraped and parsed back.

Unit tests poke the App's counters and parse `render(app)` with prometheus-client's own text
parser; one test serves real queries on loopback and scrapes the running App.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from typing import Any

import dns.message
import dns.rrset
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

import pldns.dns
from pldns.app import App
from pldns.config import parse_config
from pldns.dns.settings import HostPort
from pldns.dns.stats import DURATION_BUCKETS
from pldns.dns.table import Addresses
from pldns.dns.wire import encode_name
from pldns.metrics import (
    METRICS,
    SOURCES,
    AppCollector,
    registry_for,
    render,
)
from pldns.sync.loop import table_for
from pldns.sync.source import REASONS
from tests.fakes import clients
from tests.fakes.proc import OWNED, OWNED_IPS, base_config, free_port

UPSTREAM = HostPort("127.0.0.1", 5399)  # never contacted by the unit tests
ALLOWED_LABELS = {
    "proto", "type", "rcode", "source", "upstream", "reason", "service", "family", "result",
    "kind", "transport", "le", "version", "python", "data_plane", "outcome",
}  # fmt: skip


def make_app(**overrides: Any) -> App:
    data = base_config("127.0.0.1", 5353, [str(UPSTREAM)])
    data["services"] = {
        **data["services"],
        "oss": {"domains": ["oss-{region}-internal.aliyuncs.com"], "static": ["fd00::1"]},
        "ecs": {"domains": ["ecs.{region}.aliyuncs.com"]},
    }
    data.update(overrides)
    return App(parse_config(data), upstreams=(UPSTREAM,))


def scrape(app: App) -> dict[str, Any]:
    """Exported name (as in METRICS) -> parsed family."""
    body, _ = render(app)
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        name = family.name + "_total" if family.type == "counter" else family.name
        out[name] = family
    return out


def samples(app: App, metric: str) -> list[Sample]:
    return list(scrape(app)[metric].samples)


def value(app: App, metric: str, sample: str | None = None, **labels: str) -> float:
    """The one sample named `sample` (default: the metric) whose labels include `labels`."""
    want = sample or metric
    found = [
        s.value
        for s in samples(app, metric)
        if s.name == want and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) == 1, f"{want}{labels}: {found}"
    return found[0]


def leaked_reply(name: str, address: str) -> tuple[bytes, bytes, int]:
    """(lower-case wire qname, reply wire, end of question) for an upstream A answer."""
    query = dns.message.make_query(name, "A")
    reply = dns.message.make_response(query)
    reply.answer.append(dns.rrset.from_text(name + ".", 60, "IN", "A", address))
    wire = reply.to_wire()
    qname = encode_name(name.lower())
    return qname, wire, 12 + len(qname) + 4


# -- the documented list ---------------------------------------------------------------------


def test_every_documented_family_is_exported_and_nothing_else() -> None:
    families = scrape(make_app())
    assert list(families) == list(METRICS), "exported families must match METRICS, in order"
    for name, family in families.items():
        kind, help_text = METRICS[name]
        assert family.type == ("gauge" if kind == "info" else kind), name
        assert family.documentation == help_text
        assert help_text.strip() and name.startswith("pldns_")


def test_labels_are_bounded_names_only() -> None:
    app = make_app()
    app.stats.requests[("udp", "A")] += 1
    app.stats.dropped["acl"] += 1
    for family in scrape(app).values():
        for sample in family.samples:
            assert set(sample.labels) <= ALLOWED_LABELS, (sample.name, sample.labels)


def test_cname_chain_outcomes_exported_from_zero() -> None:
    app = make_app()
    family = scrape(app)["pldns_cname_chains_total"]
    values = {s.labels["outcome"]: s.value for s in family.samples if s.name.endswith("_total")}
    assert values == {"rewritten": 0, "signed": 0, "loop": 0}
    app.stats.chains["rewritten"] += 3
    app.stats.chains["signed"] += 1
    family = scrape(app)["pldns_cname_chains_total"]
    values = {s.labels["outcome"]: s.value for s in family.samples if s.name.endswith("_total")}
    assert values == {"rewritten": 3, "signed": 1, "loop": 0}


def test_content_type_and_registry_reused_per_app() -> None:
    app, other = make_app(), make_app()
    body, ctype = render(app)
    assert ctype.startswith("text/plain") and "version=0.0.4" in ctype
    assert body.startswith(b"# HELP pldns_")
    assert registry_for(app) is registry_for(app)
    assert registry_for(app) is not registry_for(other)


def test_describe_names_every_family_without_collecting() -> None:
    described = [f.name for f in AppCollector(object()).describe()]  # type: ignore[arg-type]
    assert len(described) == len(METRICS)


# -- DNS side --------------------------------------------------------------------------------


def test_requests_responses_dropped_and_connections() -> None:
    app = make_app()
    st = app.stats
    st.requests[("udp", "A")] += 3
    st.requests[("tcp", "other")] += 1
    st.responses[("NOERROR", "owned")] += 2
    st.responses[("SERVFAIL", "upstream")] += 1
    st.dropped["runt"] += 4
    st.inflight = 7
    st.rejected_inflight = 2
    st.tcp_connections = 5
    st.tcp_rejected = 1
    assert value(app, "pldns_dns_requests_total", proto="udp", type="A") == 3
    assert value(app, "pldns_dns_requests_total", proto="tcp", type="other") == 1
    assert value(app, "pldns_dns_responses_total", rcode="SERVFAIL", source="upstream") == 1
    assert value(app, "pldns_dns_responses_total", rcode="NOERROR", source="owned") == 2
    assert value(app, "pldns_dns_dropped_total", reason="runt") == 4
    assert value(app, "pldns_dns_dropped_total", reason="acl") == 0  # known reasons start at 0
    assert value(app, "pldns_dns_inflight") == 7
    assert value(app, "pldns_dns_inflight_rejected_total") == 2
    assert value(app, "pldns_tcp_connections_total") == 5
    assert value(app, "pldns_tcp_rejected_total") == 1
    assert value(app, "pldns_tcp_open_connections") == 0


def test_duration_histogram_is_cumulative() -> None:
    app = make_app()
    reply = b"\x00\x00\x81\x80" + bytes(8)
    for seconds in (0.0001, 0.0007, 0.0007, 0.3, 20.0):  # 20 s lands in the +Inf overflow
        app.stats.respond(reply, "upstream", seconds)
    metric = "pldns_dns_request_duration_seconds"
    buckets = [
        s
        for s in samples(app, metric)
        if s.name == metric + "_bucket" and s.labels["source"] == "upstream"
    ]
    bounds = [float(s.labels["le"]) for s in buckets]
    assert bounds == [*DURATION_BUCKETS, math.inf]
    counts = {float(s.labels["le"]): s.value for s in buckets}
    assert counts[0.00025] == 1
    assert counts[0.001] == 3
    assert counts[0.512] == 4
    assert counts[8.192] == 4
    assert counts[math.inf] == 5
    assert value(app, metric, metric + "_count", source="upstream") == 5
    assert value(app, metric, metric + "_sum", source="upstream") == pytest.approx(20.3015)
    for source in SOURCES:  # every source is exported, empty or not
        assert value(app, metric, metric + "_count", source=source) >= 0


# -- forwarding ------------------------------------------------------------------------------


def test_upstream_counters_failures_and_health() -> None:
    app = make_app()
    up = app.forwarder.upstreams[0]
    up.stats.requests = 10
    up.stats.failures["timeout"] += 3
    up.stats.duration.observe(0.003)
    name = str(UPSTREAM)
    assert value(app, "pldns_forward_requests_total", upstream=name) == 10
    assert value(app, "pldns_forward_failures_total", upstream=name, reason="timeout") == 3
    for reason in ("error", "servfail", "refused"):
        assert value(app, "pldns_forward_failures_total", upstream=name, reason=reason) == 0
    metric = "pldns_forward_request_duration_seconds"
    assert value(app, metric, metric + "_bucket", upstream=name, le="0.004") == 1
    assert value(app, metric, metric + "_bucket", upstream=name, le="0.002") == 0
    assert value(app, "pldns_forward_healthy", upstream=name) == 1
    up.stats.healthy = False
    assert value(app, "pldns_forward_healthy", upstream=name) == 0


# -- sync, snapshot, table -------------------------------------------------------------------


def test_sync_failures_are_all_exported_from_zero() -> None:
    app = make_app()
    for reason in REASONS:
        assert value(app, "pldns_sync_failures_total", reason=reason) == 0
    st = app.sync_state
    st.attempts = 9
    st.failures["throttled"] += 2
    st.consecutive_failures = 2
    st.last_success = 1_700_000_000.0
    st.last_duration = 0.25
    st.snapshot_writes = 3
    st.snapshot_errors = 1
    st.data_time = time.time() - 120
    assert value(app, "pldns_sync_attempts_total") == 9
    assert value(app, "pldns_sync_failures_total", reason="throttled") == 2
    assert value(app, "pldns_sync_consecutive_failures") == 2
    assert value(app, "pldns_sync_last_success_timestamp_seconds") == 1_700_000_000.0
    assert value(app, "pldns_sync_duration_seconds") == 0.25
    assert value(app, "pldns_snapshot_writes_total") == 3
    assert value(app, "pldns_snapshot_errors_total") == 1
    assert 119 <= value(app, "pldns_snapshot_age_seconds") <= 130
    st.data_time = None
    assert value(app, "pldns_snapshot_age_seconds") == -1
    st.last_success = None
    assert value(app, "pldns_sync_last_success_timestamp_seconds") == 0


def test_owned_ips_per_service_and_family_including_empty_services() -> None:
    app = make_app()
    assert value(app, "pldns_owned_ips", service="eci", family="ipv4") == len(OWNED_IPS)
    assert value(app, "pldns_owned_ips", service="oss", family="ipv6") == 1
    assert value(app, "pldns_owned_ips", service="ecs", family="ipv4") == 0  # configured, no IPs
    assert value(app, "pldns_owned_ips", service="ecs", family="ipv6") == 0
    assert value(app, "pldns_owned_names") == 4
    fed = {"ecs": Addresses(("10.1.0.1", "10.1.1.1", "10.1.2.1"), (), "privatelink")}
    app.swap_table(table_for(app.config, fed, loaded=True))
    assert value(app, "pldns_owned_ips", service="ecs", family="ipv4") == 3
    assert value(app, "pldns_owned_ips", service="eci", family="ipv4") == 0


# -- the process -----------------------------------------------------------------------------


def test_reloads_leaks_ready_and_build_info() -> None:
    app = make_app()
    assert value(app, "pldns_config_reloads_total", result="success") == 0
    assert value(app, "pldns_config_reloads_total", result="failure") == 0
    app.reloads["failure"] += 2
    app.config_loaded_at = 1_700_000_123.0
    assert value(app, "pldns_config_reloads_total", result="failure") == 2
    assert value(app, "pldns_config_last_reload_timestamp_seconds") == 1_700_000_123.0

    assert app.leaks is not None
    qname, reply, qend = leaked_reply("oss-cn-hangzhou.aliyuncs.com", "100.100.1.2")
    assert app.leaks.inspect(qname, reply, qend) == ["100.100.1.2"]
    app.leaks.inspect(qname, reply, qend)
    clean = leaked_reply("sts.aliyuncs.com", "47.1.2.3")
    assert app.leaks.inspect(*clean) == []
    assert value(app, "pldns_leaks_total") == 2
    assert value(app, "pldns_leaked_names") == 1

    assert value(app, "pldns_ready") == 0  # never started: no listeners
    info = [s for s in samples(app, "pldns_build_info") if s.name == "pldns_build_info"]
    assert len(info) == 1 and info[0].value == 1
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", info[0].labels["version"])
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", info[0].labels["python"])
    assert info[0].labels["data_plane"] == pldns.dns.build()
    assert pldns.dns.build() in ("compiled", "python")  # never a mix of two builds


def test_leak_detection_off_exports_zeros() -> None:
    app = make_app(leaks={"enabled": False})
    assert app.leaks is None
    assert value(app, "pldns_leaks_total") == 0
    assert value(app, "pldns_leaked_names") == 0


# -- a running App ---------------------------------------------------------------------------


def test_scrape_of_a_running_app_counts_real_queries() -> None:
    port = free_port()
    app = App(parse_config(base_config("127.0.0.1", port, [str(UPSTREAM)])), upstreams=(UPSTREAM,))

    async def main() -> None:
        await app.start()
        try:
            assert value(app, "pldns_ready") == 1
            for send in (clients.udp, clients.udp, clients.tcp):
                reply = await asyncio.to_thread(send, ("127.0.0.1", port), OWNED, "A")
                assert clients.a_records(reply) == set(OWNED_IPS)
        finally:
            await app.stop(drain=1.0)

    asyncio.run(main())
    assert value(app, "pldns_dns_requests_total", proto="udp", type="A") == 2
    assert value(app, "pldns_dns_requests_total", proto="tcp", type="A") == 1
    assert value(app, "pldns_dns_responses_total", rcode="NOERROR", source="owned") == 3
    metric = "pldns_dns_request_duration_seconds"
    assert value(app, metric, metric + "_count", source="owned") == 3
    assert value(app, "pldns_tcp_connections_total") == 1
    assert value(app, "pldns_ready") == 0  # stopped

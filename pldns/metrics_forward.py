"""The families of /metrics that #9 added or reworded (TCP closes, truncation, upstream health,
probes, upstream TCP): names, types and help, kept apart so pldns.metrics stays small. Their
values come from `AppCollector._dns` and `AppCollector._forward`."""

from __future__ import annotations

COUNTER = "counter"
GAUGE = "gauge"
HISTOGRAM = "histogram"

TRANSPORTS = ("udp", "tcp")
PROBE_RESULTS = ("ok", "fail")
TCP_CLOSE_REASONS = ("idle", "slow", "unread", "acl", "evicted")
TRUNCATION_REASONS = ("size", "tcp_failed")

# In METRICS order: right after pldns_tcp_open_connections.
FORWARD_METRICS: dict[str, tuple[str, str]] = {
    "pldns_tcp_closed_total": (
        COUNTER,
        "TCP client connections pldns closed, by reason (idle, slow: a query took longer than "
        "tcp.query_timeout to arrive, unread: replies left unread, acl: client not allowed, "
        "evicted: closed at the cap to make room for a new client).",
    ),
    "pldns_dns_truncated_total": (
        COUNTER,
        "Forwarded replies sent with TC=1, by reason (size: over the client's limit or "
        "forward.max_udp_size, tcp_failed: truncated upstream and TCP got nowhere).",
    ),
    "pldns_forward_requests_total": (
        COUNTER,
        "Queries sent to each upstream (UDP attempts and TCP retries).",
    ),
    "pldns_forward_failures_total": (
        COUNTER,
        "Upstream attempts that failed, by upstream and reason (timeout, error, servfail, "
        "refused).",
    ),
    "pldns_forward_request_duration_seconds": (
        HISTOGRAM,
        "Round-trip time of successful upstream queries, by upstream.",
    ),
    "pldns_forward_healthy": (
        GAUGE,
        "1 if the upstream is in rotation over UDP, 0 while it is down (forward.max_fails "
        "timeouts or errors in a row) and being probed.",
    ),
    "pldns_forward_tcp_healthy": (
        GAUGE,
        "1 if the upstream is in rotation over TCP, 0 while its TCP is down and being probed.",
    ),
    "pldns_forward_probes_total": (
        COUNTER,
        "Health probes (. IN NS) sent to down upstreams, by transport and result (ok, fail).",
    ),
    "pldns_forward_last_probe_timestamp_seconds": (
        GAUGE,
        "Unix time of the upstream's last probe result (0 if never probed).",
    ),
    "pldns_forward_tcp_connections_total": (
        COUNTER,
        "TCP connections opened to the upstream (pooled and reused, RFC 7766).",
    ),
}

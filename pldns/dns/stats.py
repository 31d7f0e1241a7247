"""Plain counters the hot path bumps; the metrics module exports them at scrape time.

A prometheus-client Counter costs a lock and a label lookup per increment; a dict of ints
costs ~100 ns, and so does a `Tally` (pldns.dns.tally: a collections.Counter with dict's own
item assignment). The exporter reads these when /metrics is scraped.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Final

from pldns.dns.rcode import rcode_name
from pldns.dns.tally import Tally

# Query types with their own label; everything else is "other" (bounded cardinality).
QTYPE_LABELS: Final = {
    1: "A",
    2: "NS",
    5: "CNAME",
    6: "SOA",
    12: "PTR",
    15: "MX",
    16: "TXT",
    28: "AAAA",
    33: "SRV",
    35: "NAPTR",
    43: "DS",
    48: "DNSKEY",
    64: "SVCB",
    65: "HTTPS",
    255: "ANY",
}

# The qtype labels in a fixed order, for a label kept as a small int (pldns/dns/hitpath.py).
LABEL_NAMES: Final = (*QTYPE_LABELS.values(), "other")
LABEL_INDEX: Final = {label: index for index, label in enumerate(LABEL_NAMES)}

# Request duration buckets in seconds, as CoreDNS uses (plugin/metrics/vars).
DURATION_BUCKETS: Final = (
    0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512,
    1.024, 2.048, 4.096, 8.192,
)  # fmt: skip


RCODE_LABELS: Final = tuple(rcode_name(rcode) for rcode in range(16))


def qtype_label(qtype: int) -> str:
    return QTYPE_LABELS.get(qtype, "other")


@dataclass
class Histogram:
    """Cumulative-at-export histogram: per-bucket counts, a sum and a count."""

    buckets: tuple[float, ...] = DURATION_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1


@dataclass
class UpstreamStats:
    requests: int = 0
    failures: Tally[str] = field(default_factory=Tally)  # reason -> count
    duration: Histogram = field(default_factory=Histogram)
    healthy: bool = True  # UDP in rotation
    tcp_healthy: bool = True  # TCP in rotation (judged apart from UDP)
    probes: Tally[tuple[str, str]] = field(default_factory=Tally)  # (transport, ok|fail)
    last_probe: float = 0.0  # Unix time of the last probe result; 0: never probed
    last_probe_ok: bool = False
    tcp_opened: int = 0  # TCP connections opened to it


@dataclass
class Stats:
    """Everything the DNS side counts. Labels are bounded by construction."""

    requests: Tally[tuple[str, str]] = field(default_factory=Tally)  # (proto, qtype)
    responses: Tally[tuple[str, str]] = field(default_factory=Tally)  # (rcode, source)
    duration: dict[str, Histogram] = field(default_factory=dict)  # source -> histogram
    dropped: Tally[str] = field(default_factory=Tally)  # reason
    rejected_inflight: int = 0
    inflight: int = 0
    tcp_connections: int = 0
    tcp_rejected: int = 0
    tcp_closed: Tally[str] = field(default_factory=Tally)  # reason we closed a client
    truncated: Tally[str] = field(default_factory=Tally)  # TC=1 replies we made, by cause
    upstreams: dict[str, UpstreamStats] = field(default_factory=dict)
    chains: Tally[str] = field(default_factory=Tally)  # CNAME chains into owned names

    def upstream(self, name: str) -> UpstreamStats:
        entry = self.upstreams.get(name)
        if entry is None:
            entry = self.upstreams[name] = UpstreamStats()
        return entry

    def respond(self, reply: bytes, source: str, seconds: float) -> None:
        """Count a reply we send: its RCODE (extended RCODE not included), source, duration."""
        self.responses[(RCODE_LABELS[reply[3] & 0x0F], source)] += 1
        hist = self.duration.get(source)
        if hist is None:
            hist = self.duration[source] = Histogram()
        hist.observe(seconds)

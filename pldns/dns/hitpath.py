"""The repeated cache hit answered in C: what the batched listener hands `_mmsg.serve`, and how
the tally it keeps comes back into the metrics.

`_mmsg.serve` reads a batch of datagrams as `recv` does and answers, itself, each one whose
bytes after the ID are in `CacheFlow.raw` (a query seen hit before), from a client the ACL
has allowed before, while its entry is fresh and not due for a prefetch: the reply
`CacheFlow.answer_udp` would build, byte for byte (tests/test_hitpath.py and
tests/test_hitpath_differential.py compare them). It hands back every other datagram, and
Python answers those as it would have. The cache's rules stay in Python; C only copies, which
was most of what a hit cost in Python (the README's "Compiled data plane").

Off (the listener calls `recv`) while the frontend is not accepting, the query log is on, or
the cache has no popular query yet; `raw` is emptied when the owned names or the forward
settings change (`CacheFlow.raw_current`), as on the Python path, so an owned name is never
answered from the cache, nor a hit over a UDP size a reload lowered.
"""

from __future__ import annotations

from array import array
from typing import Any

from pldns.dns.answer import SOURCE_CACHE
from pldns.dns.cache import KINDS
from pldns.dns.pipeline import Frontend

# (Histogram().buckets, not stats.DURATION_BUCKETS: mypyc does not set a Final tuple of
# literals for another module to read.)
from pldns.dns.stats import LABEL_NAMES, RCODE_LABELS, Histogram
from pldns.dns.tally import Tally


class HitPath:
    """One listener's use of `_mmsg.serve`, with its tally (see _mmsg.c for the layout)."""

    def __init__(self, io: Any, frontend: Frontend) -> None:
        self.io = io
        self.frontend = frontend
        self.tally = array("Q", bytes(8 * io.TALLY_SIZE))
        for index, bound in enumerate(Histogram().buckets):
            self.tally[io.T_BOUNDS + index] = round(bound * 1e9)
        self.served: int = io.T_SERVED
        self.answered = 0  # queries answered in C, in all (tests; the metrics count them too)

    @staticmethod
    def usable(io: Any) -> bool:
        """Does this `_mmsg` serve hits, with the labels and buckets this build counts?"""
        return (
            hasattr(io, "serve")
            and len(LABEL_NAMES) == io.LABELS
            and len(KINDS) == io.KINDS
            and len(Histogram().buckets) == io.NBOUNDS
        )

    def serve(self, fd: int, count: int) -> tuple[int, list[tuple[bytes, str, bytes]]] | None:
        """(datagrams read, those left for Python), or None when hits go through Python now
        (the caller reads with `recv`)."""
        fe = self.frontend
        flow = fe.cache
        if flow is None or not flow.raw or not fe.accepting or fe.querylog is not None:
            return None
        if not flow.raw_current():  # a reload changed the owned names or the limits
            return None
        cache = flow.cache
        tally = self.tally
        got: tuple[int, list[tuple[bytes, str, bytes]]] = self.io.serve(
            fd,
            count,
            flow.raw,
            cache.entries,
            fe.acl.verdicts,
            cache.settings.prefetch,
            flow.clock(),
            tally,
        )
        if tally[self.served]:
            self.fold(cache.hits)
        return got

    def fold(self, hits: Tally[str]) -> None:
        """Add the tally to the metrics (and `hits`, the cache's by kind), as
        `CacheFlow.answer_udp` counts, and zero it."""
        io, tally = self.io, self.tally
        stats = self.frontend.stats
        requests, responses = stats.requests, stats.responses
        base = io.T_TOUCHED
        per_label = io.KINDS * io.RCODES
        for index in range(tally[io.T_TOUCHED_N]):
            slot = tally[base + index]
            count = tally[slot]
            tally[slot] = 0
            label, rest = divmod(slot, per_label)
            kind, rcode = divmod(rest, io.RCODES)
            requests[("udp", LABEL_NAMES[label])] += count
            responses[(RCODE_LABELS[rcode], SOURCE_CACHE)] += count
            hits[KINDS[kind]] += count
        tally[io.T_TOUCHED_N] = 0
        hist = stats.duration.get(SOURCE_CACHE)
        if hist is None:
            hist = stats.duration[SOURCE_CACHE] = Histogram()
        buckets = io.T_BUCKETS
        counts = hist.counts
        for index in range(len(counts)):
            count = tally[buckets + index]
            if count:
                counts[index] += count
                tally[buckets + index] = 0
        served = tally[self.served]
        self.answered += served
        hist.count += served
        hist.total += tally[io.T_NANOS] / 1e9
        tally[self.served] = tally[io.T_NANOS] = 0
        lost = tally[io.T_LOST]
        if lost:
            stats.dropped["send"] += lost
            tally[io.T_LOST] = 0

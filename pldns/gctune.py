"""Garbage collector settings for a serving process (`pldns serve` and its workers).

Measured, not guessed (bench/querycost.py, and `gc.callbacks` timing every collection over
300k forwarded queries with the cache on): with the defaults (700, 10, 10), six full
(generation 2) collections took 325 ms of the 408 ms spent collecting, up to 99 ms each, an
event-loop stall that lands in the latency tail. A full collection walks every long-lived
container: cache entries, queries in flight, the table, the modules. Almost everything the
hot path allocates is freed by reference counting at once; the collector is only there for
cycles, which the data plane hardly makes. So:

- `gc.freeze()` once start-up is done: what it built (modules, config, the table) moves to
  the permanent generation and is never walked again;
- the oldest generation's threshold goes from 10 to 1000: a full collection needs 1000
  middle-generation collections (millions of queries) instead of 10, so it is rare. The young
  thresholds stay small (a young collection walks only the objects made since the last one:
  ~0.04 ms each); larger ones were measured too, and make each young pause longer
  (50,000: 11 ms pauses).

Cyclic garbage is still collected; what reaches the oldest generation just waits longer.
"""

from __future__ import annotations

import gc

THRESHOLDS = (700, 10, 1000)


def tune() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)

"""Garbage collector settings for a serving process (`pldns serve` and its workers).

Measured, not guessed (see the README's Benchmark, "Where a query's time goes"): with the
defaults (700, 10, 10) a forwarded query at full load spent ~13 % of its CPU time in
collections, and a full collection with 100k cached answers stalled the event loop ~45 ms.
Almost everything the hot path allocates is freed by reference counting at once; the
collector only has to find cycles, which the data plane hardly makes. So:

- `gc.freeze()` once everything built at start (modules, config, the table) is in place:
  those objects move to the permanent generation and no later collection walks them again;
- a young-generation threshold of 50,000 instead of 700 (collections ~70x rarer, each still
  small), and the older generations' thresholds raised so full collections are rare.

Cyclic garbage is still collected, just in larger, rarer batches.
"""

from __future__ import annotations

import gc

THRESHOLDS = (50_000, 20, 100)


def tune() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)

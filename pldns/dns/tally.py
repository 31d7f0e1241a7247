"""`Tally`: a collections.Counter whose `counts[key] += 1` costs what a dict's does.

Counter defines `__delitem__` (deleting a missing key is no error), and a class that defines
either half of the mapping-assignment slot gets CPython's generic slot wrapper for both: each
`counts[key] += 1` then finds `__setitem__` by a Python-level lookup and calls it, about 1.8x
a dict's cost interpreted (~180 against ~100 ns), and more of the total once compiled, where
the rest of the increment is C. Naming dict's own methods here gives the slot back to dict's C
function (CPython's typeobject.c, update_one_slot). Everything else is Counter's: a missing
key reads as 0 without being added, `update` adds, `most_common`, pickling. One difference:
`del counts[missing]` raises KeyError, as a dict's does (nothing in pldns deletes from these).

The hot path's counters are Tallies (pldns.dns.stats, pldns.dns.cache). This module is not
compiled: mypyc compiles classes that derive from object, not from dict.
"""

from __future__ import annotations

from collections import Counter
from typing import TypeVar

K = TypeVar("K")


class Tally(Counter[K]):
    __setitem__ = dict.__setitem__  # type: ignore[assignment]
    __delitem__ = dict.__delitem__  # type: ignore[assignment]

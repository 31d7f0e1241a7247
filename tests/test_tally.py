"""`Tally` (pldns/dns/tally.py): Counter's behaviour, with dict's own item assignment."""

from __future__ import annotations

import pickle
from collections import Counter

import pytest

from pldns.dns.stats import Stats
from pldns.dns.tally import Tally


def test_a_tally_counts_as_a_counter_does() -> None:
    tally: Tally[str] = Tally()
    assert tally["never"] == 0 and "never" not in tally  # read as 0, not added
    tally["a"] += 1
    tally["a"] += 2
    tally.update({"a": 1, "b": 5})  # update adds, as Counter's does (workers sum with it)
    tally.update(Tally(b=1))
    assert tally == Counter(a=4, b=6) and tally.most_common(1) == [("b", 6)]
    assert sum(tally.values()) == 10
    copy = pickle.loads(pickle.dumps(tally))
    assert type(copy) is Tally and copy == tally
    with pytest.raises(KeyError):
        del tally["missing"]  # the one difference from Counter: as a dict


def test_item_assignment_is_dicts_own() -> None:
    # What makes `counts[key] += 1` cost what a dict's does: without these two, Counter's
    # __delitem__ gives the type CPython's generic (Python-level) assignment slot.
    assert Tally.__setitem__ is dict.__setitem__
    assert Tally.__delitem__ is dict.__delitem__


def test_the_hot_path_counters_are_tallies() -> None:
    stats = Stats()
    for name in ("requests", "responses", "dropped", "tcp_closed", "truncated", "chains"):
        assert type(getattr(stats, name)) is Tally, name
    upstream = stats.upstream("127.0.0.1:53")
    assert type(upstream.failures) is Tally and type(upstream.probes) is Tally

"""The shared backoff: capped and finite for any number of failures in a row."""

from __future__ import annotations

import pytest

from pldns.dns.backoff import capped_backoff


def test_starts_at_first_and_doubles() -> None:
    assert [capped_backoff(n, 2.0, 60.0) for n in range(0, 7)] == [0, 2, 4, 8, 16, 32, 60]


def test_a_million_failures_in_a_row_stay_capped() -> None:
    waits = [capped_backoff(n, 1.0, 30.0) for n in range(1, 1_000_001)]
    assert max(waits) == 30.0
    assert waits[-1] == 30.0
    assert waits == sorted(waits)  # never shrinks while failures keep coming


@pytest.mark.parametrize("failures", [1_023, 1_024, 1_025, 1_027, 10**6, 10**18, 2**80])
def test_no_overflow_where_the_first_release_died(failures: int) -> None:
    assert capped_backoff(failures, 2.0, 3600.0) == 3600.0
    assert capped_backoff(failures, 0.001, 1e6, factor=1.5) == 1e6


def test_first_at_or_above_cap_is_the_cap() -> None:
    assert capped_backoff(5, 100.0, 10.0) == 10.0

"""One capped exponential backoff for every retry loop in pldns (upstream health, sync rounds,
reconnections).

`2.0 ** n` overflows a float once n passes ~1,023 (OverflowError), and `2 ** n` with an int
grows without bound and costs time and memory; the first release died of both. Here the
exponent is clamped before it is used, so any failure count, however large, gives a finite
value no larger than `cap`.
"""

from __future__ import annotations

import math
from typing import Final

# Past this exponent first * 2**n is above any cap we use (first >= 1e-3 s, cap <= 1e6 s).
_MAX_EXPONENT: Final = 64


def capped_backoff(failures: int, first: float, cap: float, factor: float = 2.0) -> float:
    """Seconds to wait after `failures` failures in a row: first, first*factor, ..., at most cap.

    failures <= 0 gives 0 (nothing failed, nothing to wait for). Never raises for any int.
    """
    if failures <= 0:
        return 0.0
    if first >= cap:
        return cap
    # The exponent at which the cap is reached; clamping to it keeps the power finite.
    limit = min(_MAX_EXPONENT, math.ceil(math.log(cap / first, factor)) + 1) if first > 0 else 0
    exponent = min(failures - 1, limit)
    return min(cap, first * factor**exponent)

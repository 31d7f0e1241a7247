"""The query log: one line per sampled query (the pipeline's last step)."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable


class QueryLog:
    """One line per sampled query: client, name, type, rcode, duration, answer source."""

    def __init__(self, rate: float, rand: Callable[[], float] = random.random) -> None:
        self.rate = rate
        self.rand = rand
        self.log = logging.getLogger("pldns.query")

    def sampled(self) -> bool:
        return self.rate > 0 and (self.rate >= 1 or self.rand() < self.rate)

    def write(
        self, client: str, proto: str, name: str, qtype: str, rcode: str, ms: float, source: str
    ) -> None:
        fields = {
            "client": client,
            "proto": proto,
            "name": name,
            "type": qtype,
            "rcode": rcode,
            "duration_ms": round(ms, 3),
            "source": source,
        }
        self.log.info(
            "%s %s %s %s %s %.3fms %s",
            client, proto, name, qtype, rcode, ms, source,
            extra={"fields": fields},
        )  # fmt: skip

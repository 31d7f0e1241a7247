"""The attempt policy, sans-IO: which upstream next, when an attempt has timed out, when to
give up, and what each outcome does to an upstream's health.

No sockets, no timers, no clock of its own: every method takes `now`. The forwarder does the
I/O and keeps one timer for all attempts; this module decides. Tested on a fake clock.

Health (per upstream and per transport, as CoreDNS `forward` does it): `max_fails` timeouts or
socket errors in a row take an upstream out of rotation; while out, client queries are not
sent to it and their outcomes do not change its state. A prober (pldns.dns.health) sends it
`. IN NS` every `health_interval` over the transport that failed, and `rise` good probes in a
row bring it back. Any reply, whatever its RCODE, shows the server is alive and resets the
count. UDP and TCP are judged apart: a TCP failure never takes UDP out.

When every upstream is out, a query still goes to one picked at random (CoreDNS does the same):
all being "down" is more often our view than the truth (a short network blip, a probe path
that differs), and a random pick spreads the load and cannot single out one upstream.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Sequence
from typing import Final

# An answer goes out this long before the client's deadline at the latest, so the SERVFAIL
# reaches the client before it gives up on us (a stub resolver retries at its own timeout).
MARGIN_MAX: Final = 0.3
MARGIN_FRACTION: Final = 0.1
MARGIN_MIN: Final = 0.02


class Outcome(enum.IntEnum):
    ANSWER = 0  # a reply to relay: NOERROR, NXDOMAIN, FORMERR/NOTIMP about our query, ...
    TRUNCATED = 1  # TC=1 over UDP: fetch the whole answer over TCP (RFC 7766 §5)
    SERVFAIL = 2
    REFUSED = 3
    TIMEOUT = 4
    ERROR = 5  # ICMP unreachable, connection refused or reset, a socket that cannot open


# Outcomes that say the server is not reachable on this transport (they count against it).
FAILURES: Final = frozenset({Outcome.TIMEOUT, Outcome.ERROR})


def margin(deadline: float) -> float:
    """How long before the deadline the last answer is due (bounded both ways)."""
    return max(MARGIN_MIN, min(MARGIN_MAX, deadline * MARGIN_FRACTION))


class Change(enum.Enum):
    DOWN = "down"
    UP = "up"


class Health:
    """One upstream on one transport: up or down, failures in a row, probe results."""

    __slots__ = (
        "cause", "changed_at", "down_for", "fails", "good_probes", "last_probe", "last_probe_ok",
        "max_fails", "rise", "up",
    )  # fmt: skip

    def __init__(self, max_fails: int, rise: int) -> None:
        self.max_fails = max_fails
        self.rise = rise
        self.up = True
        self.fails = 0  # timeouts/errors in a row while up
        self.good_probes = 0  # good probes in a row while down
        self.cause = ""  # why it went down (the last failure's reason)
        self.changed_at = 0.0
        self.down_for = 0.0  # how long the last outage lasted (set when it came back)
        self.last_probe = 0.0  # when the last probe's result came (0: never probed)
        self.last_probe_ok = False

    def record(self, outcome: Outcome, now: float, cause: str = "") -> Change | None:
        """A client query's outcome. Only an upstream in rotation is judged by client traffic."""
        if not self.up:
            return None
        if outcome in FAILURES:
            self.fails += 1
            self.cause = cause or outcome.name.lower()
            if self.fails >= self.max_fails:
                self.up = False
                self.good_probes = 0
                self.changed_at = now
                return Change.DOWN
            return None
        self.fails = 0
        return None

    def probed(self, ok: bool, now: float, cause: str = "") -> Change | None:
        """A health probe's result; `rise` good ones in a row bring a down upstream back."""
        self.last_probe = now
        self.last_probe_ok = ok
        if self.up:
            return None
        if not ok:
            self.good_probes = 0
            self.cause = cause or self.cause
            return None
        self.good_probes += 1
        if self.good_probes >= self.rise:
            self.up = True
            self.fails = 0
            self.down_for = now - self.changed_at
            self.changed_at = now
            return Change.UP
        return None


def choose(healths: Sequence[Health], rng: random.Random) -> list[int]:
    """The order to try upstreams in: those up, in configured order; if none, one at random
    then the others in turn (so a query still has somewhere to go)."""
    order = [i for i, h in enumerate(healths) if h.up]
    if order:
        return order
    n = len(healths)
    start = rng.randrange(n) if n else 0
    return [(start + k) % n for k in range(n)]


class Step(enum.IntEnum):
    SEND = 0  # send to `upstream` over TCP if `tcp` else UDP; the attempt times out at `expires`
    DELIVER = 1  # hand `reply` to the client (None: SERVFAIL)


class Policy:
    """The health of every upstream on both transports, and the plans of queries."""

    def __init__(
        self,
        count: int,
        max_fails: int,
        rise: int,
        deadline: float,
        try_timeout: float,
        rng: random.Random | None = None,
    ) -> None:
        self.udp = [Health(max_fails, rise) for _ in range(count)]
        self.tcp = [Health(max_fails, rise) for _ in range(count)]
        self.deadline = deadline
        self.try_timeout = try_timeout
        self.rng = rng or random.Random()
        self._all_up = list(range(count))
        self._order_cache: list[int] | None = self._all_up

    def plan(self, now: float) -> Plan:
        order = self._order_cache
        if order is None:  # some upstream is down: the order is worked out per query
            order = choose(self.udp, self.rng)
        return Plan(self, order, now)

    def record(
        self, upstream: int, tcp: bool, outcome: Outcome, now: float, cause: str = ""
    ) -> Change | None:
        """A client attempt's outcome, for that upstream's health on that transport."""
        change = (self.tcp if tcp else self.udp)[upstream].record(outcome, now, cause)
        if change is not None:
            self.changed()
        return change

    def probed(
        self, upstream: int, tcp: bool, ok: bool, now: float, cause: str = ""
    ) -> Change | None:
        change = (self.tcp if tcp else self.udp)[upstream].probed(ok, now, cause)
        if change is not None:
            self.changed()
        return change

    def changed(self) -> None:
        """Health changed: the cached order is stale."""
        self._order_cache = self._all_up if all(h.up for h in self.udp) else None

    def tcp_order(self, first: int) -> list[int]:
        """TCP after a truncated reply: the upstream that truncated, then the others whose
        TCP is up; if its TCP is down and no other is up, still that one."""
        n = len(self.tcp)
        order = [i for i in [first, *range(n)] if self.tcp[i].up]
        order = list(dict.fromkeys(order))
        return order or [first]


class Plan:
    """One client query's attempts. `next()` says what to do; `outcome()` is told what came.

    At most `max(3, 2 * upstreams)` attempts on each transport, none past `give_up_at` (the
    deadline less a margin). SERVFAIL and REFUSED move on and that upstream is not asked again;
    when all said no, the client gets SERVFAIL: an upstream's own if one said SERVFAIL, else
    ours (an upstream's REFUSED is about us, not about the client: never relayed). A truncated UDP reply switches to TCP: the same upstream first, then the others
    whose TCP is up; if TCP gets nowhere in time, the truncated reply is delivered (TC=1: the
    client may retry over TCP itself).
    """

    __slots__ = (
        "attempts", "expires", "give_up_at", "order", "policy", "reply", "said_no", "servfail",
        "tcp", "truncated", "turn", "upstream",
    )  # fmt: skip

    def __init__(self, policy: Policy, order: list[int], now: float) -> None:
        self.policy = policy
        self.order = order
        self.give_up_at = now + policy.deadline - margin(policy.deadline)
        self.attempts = max(3, 2 * len(order))
        self.turn = 0
        self.said_no: list[int] = []
        self.tcp = False
        self.truncated: bytes | None = None  # the TC=1 reply kept while TCP is tried
        self.servfail: bytes | None = None  # an upstream's SERVFAIL, kept in case all fail
        self.reply: bytes | None = None  # what DELIVER hands over
        self.upstream = -1  # the current attempt's upstream; -1 when none is under way
        self.expires = 0.0  # the current attempt's end

    def next(self, now: float) -> Step:
        """Start the next attempt (SEND: `upstream`, `tcp`, `expires`) or DELIVER `reply`."""
        order = self.order
        while self.turn < self.attempts and now < self.give_up_at:
            up = order[self.turn % len(order)]
            self.turn += 1
            if up in self.said_no:
                if len(self.said_no) >= len(order):
                    break
                continue
            self.upstream = up
            expires = now + self.policy.try_timeout
            self.expires = expires if expires < self.give_up_at else self.give_up_at
            return Step.SEND
        # A truncated reply if one is kept; else an upstream's own SERVFAIL (it may carry an
        # extended error, and RFC 2308 §7.1 lets a cache keep it); else None: our SERVFAIL.
        self.reply = self.truncated if self.truncated is not None else self.servfail
        self.upstream = -1
        return Step.DELIVER

    def outcome(self, outcome: Outcome, reply: bytes | None, now: float) -> Step:
        """What came of the current attempt (the caller has recorded it in the health);
        returns the next step."""
        if outcome == Outcome.ANSWER:
            self.reply = reply
            self.upstream = -1
            return Step.DELIVER
        if outcome == Outcome.TRUNCATED and not self.tcp:
            self.truncated = reply
            self.tcp = True
            self.order = self.policy.tcp_order(self.upstream)
            self.attempts = max(2, len(self.order))
            self.turn = 0
            self.said_no = []
        elif outcome in (Outcome.SERVFAIL, Outcome.REFUSED, Outcome.TRUNCATED):
            if outcome == Outcome.SERVFAIL and not self.tcp:
                self.servfail = reply
            if self.upstream not in self.said_no:
                self.said_no.append(self.upstream)
        return self.next(now)

    def timed_out(self, now: float) -> bool:
        return self.upstream >= 0 and now >= self.expires

"""Active health checks: a down upstream is probed on its own, never with client queries.

When the attempt policy takes an upstream out (pldns.dns.attempt.Health), the forwarder starts
a Probe for it on the transport that failed: every `health_interval` seconds it sends `. IN NS`
(RD=1, as CoreDNS `forward` does) on that upstream's UDP pool or TCP pool. Any reply with our
ID and question counts as good, whatever its RCODE: the server is alive. A probe not answered
when the next one is due counts as failed. `rise` good probes in a row bring the upstream back,
and its probe stops. One timer per probed upstream and transport, so at most 2 x upstreams.

A probe is supervised: an exception in it is logged, counted (`crashes`) and the probe goes on
at its next interval; nothing a probe does can stop DNS.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final

from pldns.dns.wire import HEADER_LEN

log = logging.getLogger("pldns.forward")

PROBE_QUESTION: Final = b"\x00\x00\x02\x00\x01"  # the root, type NS, class IN
PROBE_FLAGS: Final = b"\x01\x00"  # QUERY, RD=1
PROBE_BODY: Final = PROBE_FLAGS + b"\x00\x01\x00\x00\x00\x00\x00\x00" + PROBE_QUESTION


class Probe:
    """Probes one upstream on one transport until it is back."""

    __slots__ = ("channel", "prober", "qid", "tcp", "timer", "up")

    question = PROBE_QUESTION

    def __init__(self, prober: Prober, up: Any, tcp: bool) -> None:
        self.prober = prober
        self.up = up
        self.tcp = tcp
        self.timer: Any = None
        self.channel: Any = None  # where the probe in flight waits, None when none is
        self.qid = 0

    def schedule(self) -> None:
        fw = self.prober.forwarder
        self.timer = fw._loop.call_later(self.prober.interval, self.tick)

    def tick(self) -> None:
        self.timer = None
        try:
            ch = self.channel
            if ch is not None:  # the last one got no answer in a whole interval
                self.channel = None
                ch.forget(self.qid, self)
                self.result(False, "probe timeout")
            if self.prober.probes.get((self.up.index, self.tcp)) is not self:
                return  # the upstream came back (or the prober closed): stop
            self.send()
        except Exception:  # supervised: logged, counted, and the next interval still comes
            self.prober.crashes += 1
            log.exception("health probe of %s failed", self.up.name)
        if self.prober.probes.get((self.up.index, self.tcp)) is self and self.timer is None:
            self.schedule()

    def send(self) -> None:
        up = self.up
        ch = up.tcp.channel() if self.tcp else up.channel()
        if ch is None:
            self.result(False, up.last_error or "no socket")
            return
        ids = self.prober.forwarder.ids
        qid = ids.next()
        while qid in ch.pending:
            qid = ids.next()
        self.channel, self.qid = ch, qid
        ch.pending[qid] = self
        ch.send(qid.to_bytes(2, "big") + PROBE_BODY)

    def on_reply(self, reply: bytes) -> None:
        self.channel = None
        self.result(len(reply) >= HEADER_LEN, "")

    def on_error(self, reason: str) -> None:
        self.channel = None
        self.result(False, f"probe {reason}")

    def result(self, ok: bool, cause: str) -> None:
        fw = self.prober.forwarder
        stats = self.up.stats
        stats.probes[("tcp" if self.tcp else "udp", "ok" if ok else "fail")] += 1
        stats.last_probe = time.time()
        stats.last_probe_ok = ok
        change = fw.policy.probed(self.up.index, self.tcp, ok, fw._loop.time(), cause)
        if change is not None:
            fw.health_changed(self.up, self.tcp, change)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        ch, self.channel = self.channel, None
        if ch is not None:
            ch.forget(self.qid, self)


class Prober:
    """The probes of one forwarder, by (upstream index, tcp)."""

    def __init__(self, forwarder: Any, interval: float) -> None:
        self.forwarder = forwarder
        self.interval = interval
        self.probes: dict[tuple[int, bool], Probe] = {}
        self.crashes = 0

    def start(self, up: Any, tcp: bool) -> None:
        key = (up.index, tcp)
        if key not in self.probes:
            probe = self.probes[key] = Probe(self, up, tcp)
            probe.schedule()

    def stop(self, up: Any, tcp: bool) -> None:
        probe = self.probes.pop((up.index, tcp), None)
        if probe is not None:
            probe.cancel()

    def timers(self) -> int:
        return sum(1 for p in self.probes.values() if p.timer is not None)

    def close(self) -> None:
        for probe in self.probes.values():
            probe.cancel()
        self.probes.clear()

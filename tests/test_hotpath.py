"""The UDP prebuilt-reply path (`Frontend.answer_udp_fast`) answers and counts exactly as the
general path does, and steps aside for everything it does not cover (ACL, query log,
shutdown, other spellings); the serving process's GC settings."""

from __future__ import annotations

import gc
from typing import Any

import dns.message
import pytest

from pldns import gctune
from pldns.app import App
from pldns.config import parse_config
from pldns.dns.listeners import UdpListener

OWNED = "eci-vpc.cn-hangzhou.aliyuncs.com"


class Transport:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def sendto(self, data: bytes, addr: Any = None) -> None:
        self.sent.append((data, addr))


def build(**extra: Any) -> tuple[App, UdpListener, Transport]:
    config = parse_config(
        {
            "region": "cn-hangzhou",
            "listen": ["127.0.0.1:1"],
            "upstreams": ["127.0.0.1:2"],
            "http": {"listen": "off"},
            "services": {"eci": {"domains": [OWNED], "static": ["10.0.0.1", "10.0.0.2"]}},
            **extra,
        }
    )
    app = App(config)
    listener = UdpListener(app.frontend)
    transport = Transport()
    listener.connection_made(transport)  # type: ignore[arg-type]
    return app, listener, transport


def counts(app: App) -> tuple[int, int, int]:
    st = app.stats
    hist = st.duration.get("owned")
    return (
        st.requests[("udp", "A")],
        st.responses[("NOERROR", "owned")],
        hist.count if hist else 0,
    )


def test_fast_and_general_paths_answer_and_count_alike() -> None:
    app, listener, transport = build()
    client = ("127.0.0.1", 5353)
    plain = dns.message.make_query(OWNED, "A", id=7)
    upper = dns.message.make_query(OWNED.upper(), "A", id=8)  # not in the fast table
    listener.datagram_received(plain.to_wire(), client)
    assert counts(app) == (1, 1, 1)
    listener.datagram_received(upper.to_wire(), client)
    assert counts(app) == (2, 2, 2)
    (fast, addr1), (slow, addr2) = transport.sent
    assert addr1 == addr2 == client
    a, b = dns.message.from_wire(fast), dns.message.from_wire(slow)
    assert (a.id, b.id) == (7, 8)
    assert {r.to_text() for r in a.answer[0]} == {r.to_text() for r in b.answer[0]}
    assert a.flags == b.flags and a.rcode() == b.rcode() == 0


@pytest.mark.parametrize("case", ["acl", "querylog", "stopping"])
def test_the_fast_path_steps_aside(case: str) -> None:
    extra: dict[str, Any] = {}
    if case == "acl":
        extra["allow"] = ["10.0.0.0/8"]
    if case == "querylog":
        extra["log"] = {"queries": 1.0}
    app, listener, transport = build(**extra)
    if case == "stopping":
        app.frontend.accepting = False
    wire = dns.message.make_query(OWNED, "A").to_wire()
    client = ("127.0.0.5", 1)  # not a listen address (those are always allowed)
    assert not app.frontend.answer_udp_fast(wire, client[0], client, transport.sendto)
    assert transport.sent == []
    listener.datagram_received(wire, client)
    if case == "acl":
        ((reply, _),) = transport.sent
        assert dns.message.from_wire(reply).rcode() == 5  # REFUSED, from the general path
    elif case == "querylog":
        assert len(transport.sent) == 1 and counts(app) == (1, 1, 1)
    else:
        assert transport.sent == []  # shutting down: no new queries


def test_gc_tune_freezes_what_start_built_and_raises_thresholds() -> None:
    before = gc.get_threshold()
    try:
        gctune.tune()
        assert gc.get_threshold() == gctune.THRESHOLDS
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)

"""Names a client chose are printed escaped (RFC 1035 §5.1 \\DDD, as dnspython's to_text):
in the query log, the leak list and `pldns status`, no byte can forge a field or a line or
reach a terminal as a control sequence."""

from __future__ import annotations

import json
import logging
from typing import Any

import dns.message
import dns.name
import dns.rrset
from hypothesis import given, settings
from hypothesis import strategies as st

from pldns.dns.acl import Acl
from pldns.dns.answer import Resolver
from pldns.dns.leak import LeakDetector
from pldns.dns.pipeline import Frontend
from pldns.dns.querylog import QueryLog
from pldns.dns.settings import Leaks
from pldns.dns.stats import Stats
from pldns.dns.table import build_table
from pldns.dns.wire import decode_name, escape_text
from pldns.status import render_status

NASTY = [b"a\x1b[31mred", b"new\nline", b"sp ace", b"dot.ted", b"back\\slash", b"\xff\x00\x7f"]
NASTY_TEXT = r"a\027[31mred.new\010line.sp\032ace.dot\.ted.back\\slash.\255\000\127.aliyuncs.com."


def wire_of(labels: list[bytes]) -> bytes:
    return b"".join(bytes((len(label),)) + label for label in labels) + b"\x00"


def test_decode_name_escapes_like_dnspython() -> None:
    labels = [*NASTY, b"aliyuncs", b"com"]
    assert decode_name(wire_of(labels)) == NASTY_TEXT
    assert decode_name(wire_of(labels)) == dns.name.Name([*labels, b""]).to_text()
    assert decode_name(b"\x00") == "."


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=63), min_size=0, max_size=4))
def test_decode_name_matches_dnspython_on_any_labels(labels: list[bytes]) -> None:
    expected = dns.name.Name([*labels, b""]).to_text()
    assert decode_name(wire_of(labels)) == expected
    assert escape_text(expected) == expected  # escaping twice changes nothing
    assert all("!" <= ch <= "~" for ch in expected.replace(".", "x"))


def test_escape_text_makes_raw_text_printable() -> None:
    assert escape_text("ok.example.com.") == "ok.example.com."
    assert escape_text("a\x1b[2Jb \n.é.") == r"a\027[2Jb\032\010.\195\169."


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _capture(name: str) -> _Records:
    handler = _Records()
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return handler


def test_query_log_prints_the_name_escaped() -> None:
    handler = _capture("pldns.query")
    try:
        stats = Stats()
        resolver = Resolver(build_table({}, {}, 30, serial=1), "forward", stats)
        frontend = Frontend(
            resolver,
            None,
            Acl(["0.0.0.0/0", "::/0"]),
            "refuse",
            stats,
            10,
            querylog=QueryLog(1.0),  # type: ignore[arg-type]
        )
        name = dns.name.Name([*NASTY, b"aliyuncs", b"com", b""])
        # EDNS version 1: answered here (BADVERS), so no forwarder is needed.
        query = dns.message.make_query(name, "A", use_edns=1).to_wire()
        replies: list[bytes] = []
        assert frontend.handle(query, "127.0.0.1", "udp", replies.append)
        assert replies
    finally:
        logging.getLogger("pldns.query").removeHandler(handler)
    (record,) = handler.records
    line = record.getMessage()
    assert NASTY_TEXT in line
    assert "\n" not in line and "\x1b" not in line and "\x00" not in line
    assert record.fields["name"] == NASTY_TEXT  # type: ignore[attr-defined]


def _leak_reply(name: dns.name.Name) -> bytes:
    reply = dns.message.make_response(dns.message.make_query(name, "A"))
    reply.answer.append(dns.rrset.from_text(name, 60, "IN", "A", "100.100.1.2"))
    return reply.to_wire()


def test_leak_list_and_log_hold_the_escaped_name() -> None:
    handler = _capture("pldns.leak")
    try:
        detector = LeakDetector(Leaks())
        name = dns.name.Name([*NASTY, b"aliyuncs", b"com", b""])
        qname = name.to_wire().lower()  # type: ignore[union-attr]
        assert detector.watches(qname)
        assert detector.inspect(qname, _leak_reply(name), 12 + len(qname) + 4)
    finally:
        logging.getLogger("pldns.leak").removeHandler(handler)
    (entry,) = detector.snapshot()
    assert entry["name"] == NASTY_TEXT.lower()
    (record,) = handler.records
    assert NASTY_TEXT.lower().rstrip(".") in record.getMessage()
    assert "\x1b" not in record.getMessage() and "\n" not in record.getMessage()


def _doc(leak_name: str) -> dict[str, Any]:
    return {
        "ready": True,
        "reason": "ready",
        "services": [{"name": "eci", "domains": ["eci\x1b[2J.example.com"], "zones": {}}],
        "leak_detection": True,
        "leaks": [{"name": leak_name, "addresses": ["100.100.1.2"], "count": 1}],
        "upstreams": [],
        "sync": {"source": "static"},
    }


def test_status_prints_names_escaped_even_from_a_raw_document() -> None:
    """`pldns status --url` may read a document it did not write: escape at print time."""
    raw = json.loads(json.dumps(_doc("evil\x1b]0;pwned\x07\n.aliyuncs.com.")))
    text = render_status(raw, color=False)
    assert "\x1b" not in text and "\x07" not in text
    assert r"evil\027]0;pwned\007\010.aliyuncs.com" in text
    assert r"eci\027[2J.example.com" in text
    # Already escaped names (what pldns writes) are shown as they are.
    text = render_status(_doc(NASTY_TEXT.lower()), color=False)
    assert NASTY_TEXT.lower().rstrip(".") in text

"""Typed errors, and the one place where they map to DNS RCODEs.

The core raises these; the listeners turn them into replies (or silence) at the boundary.
"""

from __future__ import annotations

# RCODE values (RFC 1035 §4.1.1, RFC 6891 §9 for the extended BADVERS).
NOERROR = 0
FORMERR = 1
SERVFAIL = 2
NXDOMAIN = 3
NOTIMP = 4
REFUSED = 5
BADVERS = 16

RCODE_NAMES = {
    NOERROR: "NOERROR",
    FORMERR: "FORMERR",
    SERVFAIL: "SERVFAIL",
    NXDOMAIN: "NXDOMAIN",
    NOTIMP: "NOTIMP",
    REFUSED: "REFUSED",
    BADVERS: "BADVERS",
}


def rcode_name(rcode: int) -> str:
    """A bounded label for an RCODE: known names, else 'RCODE<n>' (at most 4096 values)."""
    return RCODE_NAMES.get(rcode) or f"RCODE{rcode}"


class Drop(Exception):
    """The packet gets no reply at all (a response sent to us, a runt, a denied client)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DnsError(Exception):
    """A query that is answered with an error RCODE instead of data."""

    rcode = SERVFAIL

    def __init__(self, reason: str, qend: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        # Offset just past the question when it parsed, so the reply can echo it; else 0.
        self.qend = qend


class FormatError(DnsError):
    rcode = FORMERR


class NotImplementedOpcode(DnsError):
    rcode = NOTIMP


class BadVersion(DnsError):
    rcode = BADVERS


class Refused(DnsError):
    rcode = REFUSED

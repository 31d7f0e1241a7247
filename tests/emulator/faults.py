"""Fault injection for the emulator: throttling, 5xx, permission errors, slow answers and
connection resets, each for the next N calls (of one action, or of any)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from .signature import ApiError

# Code -> (HTTP status, Message), from Alibaba Cloud's published gateway error tables.
KNOWN_ERRORS = {
    "Throttling": (400, "Request was denied due to request throttling."),
    "Throttling.User": (400, "Request was denied due to user flow control."),
    "Throttling.Api": (400, "Request was denied due to api flow control."),
    "InternalError": (
        500,
        "The request processing has failed due to some unknown error, exception or failure.",
    ),
    "ServiceUnavailable": (503, "The request has failed due to a temporary failure of the server."),
    "Forbidden.RAM": (
        403,
        "User not authorized to operate on the specified resource, or this API doesn't support RAM.",
    ),
    "NoPermission": (
        403,
        "You are not authorized to do this action. You should be authorized by RAM.",
    ),
}
# kind -> (default Code, HTTP status used for an unknown overriding code)
ERROR_KINDS = {
    "throttle": ("Throttling.User", 400),
    "5xx": ("ServiceUnavailable", 503),
    "auth": ("Forbidden.RAM", 403),
}
FAULT_KINDS = frozenset({*ERROR_KINDS, "slow", "reset"})


@dataclass
class Fault:
    kind: str
    remaining: int
    action: str | None = None
    retry_after: int | None = None  # milliseconds, sent as x-acs-retry-after
    delay: float | None = None  # seconds, for "slow"
    code: str | None = None
    status: int | None = None

    def error(self, action: str, product: str) -> ApiError:
        """The ApiError an error-kind fault answers with."""
        default_code, default_status = ERROR_KINDS[self.kind]
        code = self.code or default_code
        status, message = KNOWN_ERRORS.get(code, (default_status, code))
        extra: dict[str, Any] = {}
        if self.kind == "auth":
            extra["AccessDeniedDetail"] = {
                "AuthAction": f"{product.lower() or 'acs'}:{action}",
                "AuthPrincipalType": "SubUser",
                "AuthPrincipalDisplayName": "pldns-test",
                "NoPermissionType": "ImplicitDeny",
                "PolicyType": "AccountLevelIdentityBasedPolicy",
                "EncodedDiagnosticMessage": "AQEAAAAAaGVsbG8=",
            }
        return ApiError(self.status or status, code, message, **extra)


class FaultPlan:
    """Queued faults; each request consumes at most one (the oldest that matches)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> None:
        if fault.kind not in FAULT_KINDS:
            raise ValueError(
                f"unknown fault kind {fault.kind!r}; expected one of {sorted(FAULT_KINDS)}"
            )
        if fault.remaining < 1:
            raise ValueError("count must be >= 1")
        with self._lock:
            self._faults.append(fault)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def pending(self) -> int:
        with self._lock:
            return sum(f.remaining for f in self._faults)

    def take(self, action: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.action is None or fault.action == action:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

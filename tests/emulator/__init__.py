"""A local Alibaba Cloud OpenAPI emulator (PrivateLink + PrivateZone) for tests.

Names are imported lazily so that ``python -m tests.emulator.openapi`` runs cleanly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .openapi import TEST_ACCESS_KEY_ID, TEST_ACCESS_KEY_SECRET, Call, OpenApiEmulator
    from .signature import ApiError
    from .state import Endpoint, EndpointZone, PvtzRecord, PvtzZone, Zone

_EXPORTS = {
    "TEST_ACCESS_KEY_ID": "openapi",
    "TEST_ACCESS_KEY_SECRET": "openapi",
    "Call": "openapi",
    "OpenApiEmulator": "openapi",
    "ApiError": "signature",
    "Endpoint": "state",
    "EndpointZone": "state",
    "PvtzRecord": "state",
    "PvtzZone": "state",
    "Zone": "state",
}
__all__ = [
    "TEST_ACCESS_KEY_ID",
    "TEST_ACCESS_KEY_SECRET",
    "ApiError",
    "Call",
    "Endpoint",
    "EndpointZone",
    "OpenApiEmulator",
    "PvtzRecord",
    "PvtzZone",
    "Zone",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)

"""Helpers for tests that point the real Alibaba Cloud SDK at an :class:`OpenApiEmulator`.

Unlike the rest of this package this module imports the SDK (``alibabacloud_tea_openapi``).
"""

from __future__ import annotations

from typing import Any

import pytest
from alibabacloud_tea_openapi.models import Config

from .openapi import TEST_ACCESS_KEY_ID, TEST_ACCESS_KEY_SECRET, OpenApiEmulator

# darabonba reads these itself (requests/aiohttp get explicit proxies, NO_PROXY is not honoured).
PROXY_ENV_VARS = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
)


def clear_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def sdk_config(emu: OpenApiEmulator, **overrides: Any) -> Config:
    """An SDK ``Config`` for the emulator: test AccessKey, plain HTTP, timeouts in ms."""
    fields: dict[str, Any] = {
        "access_key_id": TEST_ACCESS_KEY_ID,
        "access_key_secret": TEST_ACCESS_KEY_SECRET,
        "endpoint": emu.endpoint,
        "protocol": "http",
        "region_id": emu.region,
        "read_timeout": 5000,
        "connect_timeout": 2000,
    }
    fields.update(overrides)
    return Config(**fields)

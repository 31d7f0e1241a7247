"""External tools some tests run (kubectl, promtool, ...): skipped on a machine without them,
but a failure where they are required. `.ci/run` sets PLDNS_REQUIRE_TOOLS=1 after
.ci/deploy-deps.sh installed them, so in CI nothing is skipped for a missing tool.
"""

from __future__ import annotations

import importlib
import os
import shutil
from types import ModuleType

import pytest

REQUIRE_ENV = "PLDNS_REQUIRE_TOOLS"


def required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


def _missing(what: str) -> None:
    message = f"{what} is not installed (.ci/deploy-deps.sh installs it)"
    if required():
        pytest.fail(f"{message}; {REQUIRE_ENV} is set, so this is an error, not a skip")
    pytest.skip(message)


def tool(name: str) -> str:
    """The path of executable `name`; skip (or fail under PLDNS_REQUIRE_TOOLS) without it."""
    path = shutil.which(name) or (
        f"/usr/sbin/{name}" if os.access(f"/usr/sbin/{name}", os.X_OK) else None
    )
    if path is None:
        _missing(name)
    assert path is not None
    return path


def module(name: str) -> ModuleType:
    """Import Python module `name`; skip (or fail under PLDNS_REQUIRE_TOOLS) without it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        _missing(f"the Python module {name}")
        raise

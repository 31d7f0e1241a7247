"""pldns.dns._mmsg for the tests, in either build.

The compiled build (scripts/test-compiled.sh) has it next to its source; the pure suite
compiles pldns/dns/_mmsg.c here with the same compiler and headers the compiled build needs
(scripts/install-test-deps.sh installs them), so both suites test the batched listener.
"""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sysconfig
from pathlib import Path
from types import ModuleType

SOURCE = Path(__file__).resolve().parents[2] / "pldns" / "dns" / "_mmsg.c"


def load_mmsg(workdir: Path) -> ModuleType:
    """The installed module if this build has one, else one compiled from the source."""
    try:
        return importlib.import_module("pldns.dns._mmsg")
    except ImportError:
        pass
    target = workdir / f"_mmsg{sysconfig.get_config_var('EXT_SUFFIX')}"
    command = [
        "gcc", "-O2", "-Wall", "-Werror", "-shared", "-fPIC",
        f"-I{sysconfig.get_paths()['include']}", str(SOURCE), "-o", str(target),
    ]  # fmt: skip
    built = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, f"building _mmsg.c failed:\n{built.stderr}"
    spec = importlib.util.spec_from_file_location("_mmsg", target)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

"""The torture harness in its bounded form (scripts/torture/torture.py --ci, under 90 s).

It needs `unshare --net` (root) for its private network namespace; elsewhere it is skipped.
The full run (`python3 scripts/torture/torture.py`) makes the README's Reliability table.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "torture" / "torture.py"


def _can_unshare() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, timeout=10)
    return probe.returncode == 0


@pytest.mark.torture
def test_torture_ci_form_meets_every_target() -> None:
    if not _can_unshare():
        pytest.skip("needs root and unshare --net")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--ci"],
        capture_output=True, text=True, timeout=110, env=env, cwd=REPO,
    )  # fmt: skip
    table = proc.stdout
    assert proc.returncode == 0, f"{table}\n{proc.stderr[-4000:]}"
    assert "| TCP abuse: slowloris |" in table and "| UDP fuzz |" in table
    assert "**no**" not in table

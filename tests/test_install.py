"""Installing pldns, offline: the wheel in a brand-new venv (what the Dockerfile does), and the
README's first command with a distribution's "externally managed" Python (PEP 668).

Nothing here reaches a package index: pldns's wheel is built from the source under test with
`--no-build-isolation --no-deps --no-index`, and its dependencies come from `.wheelhouse/`,
which `scripts/install-test-deps.sh` (a CI step, with network) fills. Without a wheelhouse
these tests are skipped with that instruction.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.fakes.proc import REPO

WHEELHOUSE = Path(os.environ.get("PLDNS_WHEELHOUSE", REPO / ".wheelhouse"))
CONFIGS = sorted(
    [
        *(REPO / "deploy/kubernetes").glob("**/config/*.yaml"),
        REPO / "deploy/container/pldns.yaml",
        REPO / "deploy/systemd/pldns.yaml",
    ]
)
SDK_IMPORTS = (
    "import pldns, pldns.sync.kube, pldns.sync.lease, pldns.sync.privatelink, pldns.synccli;"
    "import alibabacloud_privatelink20200415.client, alibabacloud_credentials.client;"
    "print(pldns.__file__)"
)


def wheelhouse() -> Path:
    if not any(WHEELHOUSE.glob("PyYAML-*.whl")) and not any(WHEELHOUSE.glob("pyyaml-*.whl")):
        pytest.skip(f"no wheelhouse at {WHEELHOUSE}: run scripts/install-test-deps.sh first")
    return WHEELHOUSE


def offline_env(home: Path) -> dict[str, str]:
    """pip with no index and no user/site config: only the wheelhouse (and what we pass)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PIP_") and k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
    }
    env.update(
        PIP_CONFIG_FILE=os.devnull,
        PIP_NO_INDEX="1",
        PIP_FIND_LINKS=str(wheelhouse()),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_CACHE_DIR="1",
        HOME=str(home),
    )
    return env


def copy_source(dest: Path, extra: tuple[str, ...] = ()) -> Path:
    """What a clone holds that installing needs (no egg-info, no .venv, no caches)."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("pldns", *extra):
        shutil.copytree(REPO / name, dest / name, ignore=ignore, symlinks=True)
    return dest


def test_wheel_installs_and_runs_in_a_clean_venv(tmp_path: Path) -> None:
    """What the Dockerfile does, in a venv: a wheel of pldns, then an install from wheels alone
    (`--no-index`) into a new venv; then the installed `pldns` runs: version, check of every
    shipped config, and the imports `pldns sync` needs (the cloud SDK is a dependency)."""
    env = offline_env(tmp_path)
    src = copy_source(tmp_path / "src")
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-build-isolation", "--no-deps",
         "--wheel-dir", str(wheels), str(src)],
        check=True, timeout=300, env=env,
    )  # fmt: skip
    built = sorted(wheels.glob("pldns-*.whl"))
    assert len(built) == 1, built
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True, clear=True)
    bin_dir = env_dir / "bin"
    subprocess.run(
        [bin_dir / "pip", "install", "--quiet", *map(str, built)],
        check=True, timeout=300, env=env,
    )  # fmt: skip
    cwd = tmp_path  # not the repo: the installed package, not the source tree, must be used
    version = subprocess.run(
        [bin_dir / "pldns", "version"], capture_output=True, text=True, env=env, cwd=cwd, check=True
    )
    # an ordinary install is pure Python (PLDNS_COMPILE=1 builds the compiled data plane)
    assert re.fullmatch(r"pldns \d+\.\d+\.\d+\S* \(data plane: python\)\n", version.stdout)
    for config in CONFIGS:
        done = subprocess.run(
            [bin_dir / "pldns", "check", "--config", str(config)],
            capture_output=True, text=True, env=env, cwd=cwd, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, f"{config}:\n{done.stdout}{done.stderr}"
    where = subprocess.run(
        [bin_dir / "python", "-c", SDK_IMPORTS], capture_output=True, text=True, env=env, cwd=cwd
    )
    assert where.returncode == 0, where.stderr
    assert where.stdout.startswith(str(env_dir)), where.stdout


def externally_managed_python() -> str:
    """The distribution's Python, when it is PEP 668 "externally managed" and can make venvs
    for the wheels we have (same minor version as the one running the tests)."""
    python = "/usr/bin/python3"
    probe = (
        "import sys, sysconfig, os, venv, ensurepip;"
        "print(sys.version_info[:2] ==" + repr(tuple(sys.version_info[:2])) + ","
        "os.path.exists(os.path.join(sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED')))"
    )
    if not os.access(python, os.X_OK):
        pytest.skip("no /usr/bin/python3 here")
    done = subprocess.run([python, "-I", "-c", probe], capture_output=True, text=True)
    if done.stdout.split() != ["True", "True"]:
        pytest.skip(
            f"{python} is not an externally managed Python {sys.version_info[:2]} with venv "
            f"({done.stdout.strip() or done.stderr.strip()}): scripts/install-test-deps.sh "
            "installs python3-venv on Debian/Ubuntu"
        )
    return python


def readme_first_command() -> str:
    head = (REPO / "README.md").read_text().split("## ", 1)[0]
    return next(line[4:] for line in head.splitlines() if line.startswith("    ") and line.strip())


def test_readme_first_command_with_an_externally_managed_python(tmp_path: Path) -> None:
    """A fresh clone, `python3` the distribution's own (PEP 668 marker in its stdlib), the
    README's first command verbatim except that it checks the demo config instead of serving
    it (port 1053 may be in use here): the venv is made and pldns runs from it."""
    python = externally_managed_python()
    env = offline_env(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(python)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    clone = copy_source(tmp_path / "clone", extra=("scripts", "config"))

    # The marker is in force: the old way (pip into the interpreter) is refused.
    refused = subprocess.run(
        ["python3", "-m", "pip", "install", "--dry-run", "."],
        capture_output=True, text=True, env=env, cwd=clone, timeout=120,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "externally-managed-environment" in refused.stdout + refused.stderr or (
        "No module named pip" in refused.stderr
    ), refused.stderr

    command = readme_first_command()
    assert command.endswith("serve --config config/pldns.yaml"), command
    command = command.replace(" serve --config", " check --config")
    done = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, env=env, cwd=clone, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "config config/pldns.yaml: OK" in done.stdout, done.stdout
    venv_python = clone / ".venv" / "bin" / "python"
    where = subprocess.run(
        [venv_python, "-c", "import sys, pldns; print(sys.base_prefix, pldns.__file__)"],
        capture_output=True, text=True, env=env, cwd=tmp_path, check=True,
    )  # fmt: skip
    base, module = where.stdout.split()
    assert base == "/usr", base  # the venv was made from the distribution's Python
    assert module == str(clone / "pldns" / "__init__.py")  # editable: the clone's code

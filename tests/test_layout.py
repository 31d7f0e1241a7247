"""The data plane (pldns/dns) imports nothing from config, sync, yaml or the cloud SDK.

Checked on the source (AST) rather than at import time, so that a lazy import inside a function
is caught too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

DNS = Path(__file__).parents[1] / "pldns" / "dns"
ALLOWED_PLDNS = ("pldns.dns",)
FORBIDDEN_THIRD_PARTY = ("yaml", "alibabacloud", "Tea", "prometheus_client", "dnslib")


def imported_modules(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:
            names.append("." * node.level + (node.module or ""))
    return names


@pytest.mark.parametrize("path", sorted(DNS.glob("*.py")), ids=lambda p: p.name)
def test_data_plane_imports_only_itself_and_stdlib(path: Path) -> None:
    for name in imported_modules(path):
        assert not name.startswith("."), f"{path.name}: relative import {name}"
        if name == "pldns" or name.startswith("pldns."):
            assert name.startswith(ALLOWED_PLDNS), f"{path.name} imports {name}"
        assert not name.startswith(FORBIDDEN_THIRD_PARTY), f"{path.name} imports {name}"


def test_the_rule_would_catch_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from pldns.sync.loop import Syncer\n    import yaml\n")
    assert imported_modules(bad) == ["pldns.sync.loop", "yaml"]
    with pytest.raises(AssertionError):
        test_data_plane_imports_only_itself_and_stdlib(bad)


def test_every_module_stays_small() -> None:
    root = Path(__file__).parents[1] / "pldns"
    big = {
        str(p.relative_to(root)): n
        for p in root.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 450
    }
    assert not big, f"modules over ~400 lines: {big}"


# Data-plane modules that stay interpreted in the compiled build, and why (pldns.dns.COMPILED).
INTERPRETED = {"__init__", "rcode", "settings", "table", "tally"}


def test_every_data_plane_module_is_compiled_or_left_out_on_purpose() -> None:
    """A new module under pldns/dns joins COMPILED (the build compiles it) or INTERPRETED here
    with a reason in pldns/dns/__init__.py; setup.py compiles exactly COMPILED."""
    import pldns.dns

    modules = {p.stem for p in DNS.glob("*.py")}
    assert set(pldns.dns.COMPILED) | INTERPRETED == modules
    assert not set(pldns.dns.COMPILED) & INTERPRETED
    setup = (Path(__file__).parents[1] / "setup.py").read_text()
    assert "pldns.dns.COMPILED" in setup and "mypycify(compiled_modules()" in setup


def test_build_names_how_the_data_plane_runs() -> None:
    import pldns.dns

    assert pldns.dns.load() in ("python", "compiled")  # every module one way, never a mix
    assert pldns.dns.build() == ("compiled" if pldns.dns.compiled() else "python")

"""The README tells the truth: examples parse, documented defaults are the real defaults,
every shipped config passes `pldns check`, every subcommand is documented."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from pldns.cli import _parser
from pldns.config import load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.S | re.M)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def _yaml_blocks(text: str) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", text, re.S)


@pytest.mark.parametrize("block", _yaml_blocks(_section("Examples")))
def test_examples_parse(block: str) -> None:
    config = parse_config(yaml.safe_load(block))
    assert config.services, "an example without services shows nothing"


def test_syntax_block_documents_the_real_defaults() -> None:
    (block,) = _yaml_blocks(_section("Syntax"))
    documented = parse_config(yaml.safe_load(block))
    minimal = parse_config(
        {
            "region": "cn-hangzhou",
            "services": {
                "eci": {"domains": ["eci-vpc.{region}.aliyuncs.com", "eci.{region}.aliyuncs.com"]}
            },
        }
    )
    # Every section the Syntax block spells out with default values equals the parser's default.
    assert replace(documented, source="") == replace(minimal, source="")


def test_every_top_level_key_is_documented() -> None:
    (block,) = _yaml_blocks(_section("Syntax"))
    documented = set(yaml.safe_load(block))
    from pldns.config import Config

    fields = {f for f in Config.__dataclass_fields__ if f != "source"}
    assert documented == fields


@pytest.mark.parametrize(
    "path",
    sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("config/*.yaml")),
)
def test_shipped_configs_load(path: str) -> None:
    load_config(ROOT / path)


def test_every_subcommand_is_documented() -> None:
    commands = _section("Commands")
    sub = next(a for a in _parser()._actions if a.dest == "command")
    for name in sub.choices:  # type: ignore[union-attr]
        assert f"`pldns {name}" in commands, f"pldns {name} is not in the README"


def test_first_command_uses_the_demo_config() -> None:
    head = README.split("## ", 1)[0]
    assert "pldns serve --config config/pldns.yaml" in head
    demo = load_config(ROOT / "config/pldns.yaml")
    assert [str(a) for a in demo.listen] == ["127.0.0.1:1053"]
    assert "dig @127.0.0.1 -p 1053 eci-vpc.cn-hangzhou.aliyuncs.com" in head


def _top_commands() -> list[str]:
    """The indented command lines before the first section: the install/run and test commands."""
    head = README.split("## ", 1)[0]
    return [line[4:] for line in head.splitlines() if line.startswith("    ") and line.strip()]


def test_the_two_top_commands_use_the_project_venv() -> None:
    first, test = _top_commands()
    # Never pip into the interpreter itself: a distribution's Python refuses it (PEP 668).
    assert first.startswith("scripts/venv.sh && .venv/bin/pldns serve"), first
    assert ".venv/bin/python -m pytest" in test and "scripts/install-test-deps.sh" in test, test
    assert "python3 -m pip" not in first + test


def test_ci_runs_exactly_the_readme_test_command() -> None:
    _, test = _top_commands()
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test in lines, f".ci/run does not run the README's test command {test!r}"


def test_deploy_readme_paths_are_relative_to_the_repository_root() -> None:
    """deploy/README.md names files from the repository root, and they exist."""
    text = (ROOT / "deploy" / "README.md").read_text()
    tokens = {t for span in re.findall(r"`([^`\n]+)`", text) for t in span.split()}
    tokens |= set(re.findall(r"(?<=\s)((?:deploy|kubernetes|systemd|monitoring)/\S+)", text))
    relative = sorted(
        t for t in tokens
        if t.startswith(("../", "kubernetes/", "systemd/", "container/", "coredns/", "monitoring/", "base/"))
    )  # fmt: skip
    relative = [t for t in relative if "#" not in t]  # kubernetes/kubernetes#56374: an issue
    assert not relative, f"paths relative to deploy/ (write deploy/...): {relative}"
    for token in sorted(t for t in tokens if t.startswith("deploy/")):
        path = token.rstrip(".,:;)`'\"")
        if any(c in path for c in "<{*"):
            path = re.split(r"[<{*]", path)[0].rsplit("/", 1)[0]
        assert (ROOT / path).exists(), f"deploy/README.md names {token}, which does not exist"

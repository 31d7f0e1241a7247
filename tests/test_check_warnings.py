"""`pldns check` warns about what parses but cannot be meant: documentation addresses and
placeholders (exit 0, a `warning:` line each); `--strict` makes them errors (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pldns.cli import main
from pldns.config.warnings import config_warnings

ROOT = Path(__file__).resolve().parent.parent
BASE = {
    "region": "cn-hangzhou",
    "listen": ["127.0.0.1:1053"],
    "upstreams": ["10.1.1.1"],
    "services": {"eci": {"domains": ["eci-vpc.{region}.aliyuncs.com"], "static": ["10.0.0.5"]}},
}


def _write(tmp_path: Path, **overrides: object) -> str:
    path = tmp_path / "pldns.yaml"
    path.write_text(yaml.safe_dump({**BASE, **overrides}))
    return str(path)


@pytest.mark.parametrize(
    ("key", "value", "path"),
    [
        ("upstreams", ["192.0.2.53"], "upstreams[0]"),
        ("upstreams", ["10.1.1.1", "198.51.100.7:5353"], "upstreams[1]"),
        ("upstreams", ["[2001:db8::53]:53"], "upstreams[0]"),
        ("listen", ["203.0.113.1:53"], "listen[0]"),
        ("services", {"eci": {"domains": ["eci-vpc.{region}.aliyuncs.com"], "static": ["192.0.2.9"]}}, "services.eci.static[0]"),
        ("privatelink", {"vpc_id": "vpc-EDIT-ME"}, "privatelink.vpc_id"),
        ("privatelink", {"vpc_id": "<your VPC id>"}, "privatelink.vpc_id"),
        ("privatelink", {"vpc_id": "vpc-1", "https_proxy": "http://proxy.idc.example:3128"}, "privatelink.https_proxy"),
    ],
)  # fmt: skip
def test_a_warning_line_and_exit_0_then_exit_2_with_strict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, value: object, path: str
) -> None:
    config = _write(tmp_path, **{key: value})
    assert main(["check", "--config", config]) == 0
    out, err = capsys.readouterr()
    assert "OK" in out
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: {path}: "), err
    assert warnings[0].endswith(("replace it with a real one", "replace it with the real value"))
    assert main(["check", "--strict", "--config", config]) == 2
    assert "1 warning(s), and --strict" in capsys.readouterr().err


def test_real_values_give_no_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _write(
        tmp_path,
        upstreams=["192.0.3.1", "198.51.101.1", "203.0.112.255", "2001:db9::1", "resolv.conf"],
        privatelink={"vpc_id": "vpc-bp1example2edit", "endpoint": "privatelink.cn-hangzhou.aliyuncs.com"},
    )  # fmt: skip
    assert main(["check", "--strict", "--config", config]) == 0
    assert "warning" not in capsys.readouterr().err


def test_the_demo_is_clean_and_the_shipped_templates_say_what_to_edit() -> None:
    assert config_warnings(yaml.safe_load((ROOT / "config/pldns.yaml").read_text())) == []
    idc = config_warnings(yaml.safe_load((ROOT / "config/idc-host.yaml").read_text()))
    assert {w.split(":")[0] for w in idc} == {"upstreams[0]", "upstreams[1]", "privatelink.vpc_id"}


@pytest.mark.parametrize("key", ["access_key_secret", "access_key_id", "secret"])
def test_a_secret_straight_under_privatelink_gets_the_secrets_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str
) -> None:
    config = _write(tmp_path, privatelink={"vpc_id": "vpc-1", key: "S3cr3tValueXyz"})
    assert main(["check", "--config", config]) == 2
    err = capsys.readouterr().err
    assert f"privatelink.{key}: secrets do not belong in the config" in err
    assert "unknown" not in err and "S3cr3tValueXyz" not in err

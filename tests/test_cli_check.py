"""`pldns check --config FILE`: exit 0 and a summary, or exit 2 and the problems on stderr."""

from __future__ import annotations

import pytest

from pldns.cli import main

VALID = """\
region: cn-hangzhou
listen: ["127.0.0.1:1053", "[::1]:1053"]
upstreams: [resolv.conf, "10.0.0.9:5353"]
forward:
  resolv_conf: {resolv}
answers:
  ttl: 45
  when_unknown: servfail
services:
  eci:
    domains: ["eci-vpc.{{region}}.aliyuncs.com", "eci.{{region}}.aliyuncs.com"]
    static: [192.168.10.5, 192.168.11.5]
  vpc:
    domains:
      - vpc-vpc.{{region}}.aliyuncs.com
"""


@pytest.fixture
def resolv(tmp_path):
    path = tmp_path / "resolv.conf"
    path.write_text("# test\nnameserver 10.0.0.2\nnameserver 127.0.0.1\noptions ndots:2\n")
    return path


def write(tmp_path, text):
    path = tmp_path / "pldns.yaml"
    path.write_text(text)
    return str(path)


def test_valid_config(tmp_path, resolv, capsys):
    path = write(tmp_path, VALID.format(resolv=resolv))
    assert main(["check", "--config", path]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert f"config {path}: OK" in out
    assert "region     cn-hangzhou" in out
    assert "127.0.0.1:1053, [::1]:1053" in out
    assert "upstreams  10.0.0.2:53, 127.0.0.1:53, 10.0.0.9:5353" in out
    assert "ttl 45s, unknown names: servfail" in out
    assert "service eci: 192.168.10.5, 192.168.11.5" in out
    assert "service vpc: none yet (servfail)" in out
    for domain in (
        "eci-vpc.cn-hangzhou.aliyuncs.com",
        "eci.cn-hangzhou.aliyuncs.com",
        "vpc-vpc.cn-hangzhou.aliyuncs.com",
    ):
        assert f"    {domain}\n" in out


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("ttl: 45", "ttl: -1"), ["answers.ttl: expected an integer from 0 to 86400, got -1"]),
        (
            ('"10.0.0.9:5353"', '"10.0.0.300"'),
            ["upstreams[1]: '10.0.0.300' is not an IP address"],
        ),
        (
            ("ttl: 45", "ttl: 45\n  colour: blue"),
            ["answers.colour: unknown key"],
        ),
        (
            ("static: [192.168.10.5,", "statik: [192.168.10.5,"),
            ["services.eci.statik: unknown key"],
        ),
        (
            ("when_unknown: servfail", "when_unknown: maybe"),
            ["answers.when_unknown: expected one of forward, servfail"],
        ),
        (
            ('"10.0.0.9:5353"', '"127.0.0.1:1053"'),
            ["upstreams[1]: 127.0.0.1:1053 is pldns's own listen address"],
        ),
        (
            ("ttl: 45", "ttl: x"),
            ["answers.ttl: expected an integer"],
        ),
    ],
    ids=["ttl-range", "bad-upstream", "unknown-key", "service-typo", "choice", "loop", "ttl-type"],
)
def test_broken_config(tmp_path, resolv, capsys, change, expected):
    text = VALID.format(resolv=resolv)
    assert change[0] in text
    path = write(tmp_path, text.replace(change[0], change[1]))
    assert main(["check", "--config", path]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines[0] == f"pldns: {path}: invalid config"
    for problem in expected:
        assert any(line.strip().startswith(problem) for line in lines[1:]), err


def test_several_problems_each_on_a_line(tmp_path, resolv, capsys):
    text = VALID.format(resolv=resolv).replace("ttl: 45", "ttl: -1\n  foo: 1")
    path = write(tmp_path, text.replace("region: cn-hangzhou", "region: cn-hangzhou\ndeny: ignore"))
    assert main(["check", "--config", path]) == 2
    err = capsys.readouterr().err
    keys = [line.strip().split(":", 1)[0] for line in err.splitlines()[1:]]
    assert keys == ["deny", "answers.ttl", "answers.foo"]


def test_missing_file(tmp_path, capsys):
    path = str(tmp_path / "nope.yaml")
    assert main(["check", "--config", path]) == 2
    err = capsys.readouterr().err
    assert f"pldns: {path}: invalid config" in err
    assert "cannot read" in err


def test_missing_resolv_conf(tmp_path, capsys):
    path = write(tmp_path, VALID.format(resolv=tmp_path / "no-resolv.conf"))
    assert main(["check", "--config", path]) == 2
    assert "upstreams[0]: cannot read" in capsys.readouterr().err


def test_unquoted_template_in_flow_list(tmp_path, resolv, capsys):
    text = VALID.format(resolv=resolv).replace(
        '"eci-vpc.{region}.aliyuncs.com"', "eci-vpc.{region}.aliyuncs.com"
    )
    path = write(tmp_path, text)
    assert main(["check", "--config", path]) == 2
    err = capsys.readouterr().err
    assert "not valid YAML" in err and "quote templated names" in err

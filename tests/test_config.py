"""The strict config parser: valid configs, defaults, and one case per kind of mistake."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from pldns.config import load_config, parse_config
from pldns.config.dns import DEFAULT_ALLOW, RESOLV_CONF, Service
from pldns.config.schema import ConfigError
from pldns.dns.settings import Answers, Forward, HostPort, Tcp

FULL = {
    "region": "cn-hangzhou",
    "listen": ["127.0.0.1:1053", "[::1]:5353", "10.0.0.9"],
    "upstreams": ["resolv.conf", "10.0.0.2", "[2001:db8::1]:5353", "10.0.0.3:54"],
    "allow": ["10.0.0.0/8", "192.168.1.7/24", "::1/128"],
    "deny": "drop",
    "answers": {"ttl": 60, "when_unknown": "servfail"},
    "forward": {
        "try_timeout": 0.5,
        "deadline": 2,
        "max_inflight": 500,
        "udp_sockets": 4,
        "socket_queries": 100,
        "resolv_conf": "/tmp/resolv.conf",
    },
    "tcp": {"idle_timeout": 5, "max_connections": 50, "max_pipelined": 10},
    "services": {
        "eci": {
            "domains": ["eci-vpc.{region}.aliyuncs.com", "ECI.{region}.aliyuncs.com."],
            "static": ["192.168.10.5", "fd00::5", "192.168.11.5"],
        },
        "vpc": {"domains": ["vpc-vpc.{region}.aliyuncs.com"]},
    },
    "cache": {"size": 5000, "max_ttl": 600, "stale_window": 0},
}


def test_full_config():
    config = parse_config(FULL, source="x.yaml")
    assert config.region == "cn-hangzhou"
    assert config.listen == (
        HostPort("127.0.0.1", 1053),
        HostPort("::1", 5353),
        HostPort("10.0.0.9", 53),
    )
    assert config.upstreams == (
        RESOLV_CONF,
        HostPort("10.0.0.2", 53),
        HostPort("2001:db8::1", 5353),
        HostPort("10.0.0.3", 54),
    )
    assert config.allow == ("10.0.0.0/8", "192.168.1.0/24", "::1/128")
    assert config.deny == "drop"
    assert config.answers == Answers(ttl=60, when_unknown="servfail")
    assert config.forward == Forward(0.5, 2, 500, 4, 100, "/tmp/resolv.conf")
    assert config.tcp == Tcp(5, 50, 10)
    eci, vpc = config.services
    assert (eci.name, vpc.name) == ("eci", "vpc")
    assert eci.domains == ("eci-vpc.cn-hangzhou.aliyuncs.com", "eci.cn-hangzhou.aliyuncs.com")
    assert eci.static == ("192.168.10.5", "fd00::5", "192.168.11.5")
    assert (eci.static_v4, eci.static_v6) == (("192.168.10.5", "192.168.11.5"), ("fd00::5",))
    assert vpc.domains == ("vpc-vpc.cn-hangzhou.aliyuncs.com",) and vpc.static == ()
    assert config.source == "x.yaml"
    cache = config.cache
    assert (cache.size, cache.max_ttl, cache.stale_window, cache.enabled) == (5000, 600, 0, True)
    assert str(config.listen[1]) == "[::1]:5353" and str(config.listen[0]) == "127.0.0.1:1053"


def test_defaults():
    config = parse_config({"region": "cn-beijing"})
    assert config.listen == (HostPort("127.0.0.1", 53),)
    assert config.upstreams == (RESOLV_CONF,)
    assert config.allow == DEFAULT_ALLOW
    assert config.deny == "refuse"
    assert config.answers == Answers()
    assert config.answers.ttl == 30 and config.answers.when_unknown == "forward"
    assert config.forward == Forward()
    assert config.forward.resolv_conf == "/etc/resolv.conf"
    assert config.tcp == Tcp()
    assert config.services == ()


SECTIONS = [
    "answers", "forward", "tcp", "sync", "privatelink", "http", "log", "lifecycle", "leaks", "cache",
]  # fmt: skip


@pytest.mark.parametrize(
    ("section", "value"),
    [(s, v) for s in SECTIONS for v in (None, {})]
    + [
        ("services", None),
        ("services", {}),
        ("allow", None),
        ("upstreams", None),
        ("listen", None),
    ],
    ids=lambda x: "null" if x is None else "empty" if x == {} else x,
)
def test_empty_sections_take_defaults(section, value):
    """`section:` left empty (YAML null) or `{}` means every key of it at its default."""
    plain = parse_config({"region": "cn-beijing"})
    config = parse_config({"region": "cn-beijing", section: value})
    assert getattr(config, section) == getattr(plain, section)
    assert config == plain
    # ... and those defaults are not the values a full config sets (the check can fail).
    if section in FULL:
        assert getattr(parse_config(FULL), section) != getattr(plain, section)


def test_region_expanded():
    config = parse_config(
        {"region": "ap-southeast-1", "services": {"eci": {"domains": ["eci.{region}.x.com"]}}}
    )
    assert config.services == (
        Service("eci", ("eci.ap-southeast-1.x.com",), (), config.services[0].matcher),
    )


def with_change(path: str, value):
    """FULL with one dotted key set (value ... deletes it)."""
    data = copy.deepcopy(FULL)
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node[key]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return data


MISTAKES = [
    ("unknown-top-key", with_change("colour", "blue"), "colour: unknown key"),
    ("unknown-answers-key", with_change("answers.foo", 1), "answers.foo: unknown key"),
    ("unknown-forward-key", with_change("forward.bar", 1), "forward.bar: unknown key"),
    ("unknown-service-key", with_change("services.eci.typo", 1), "services.eci.typo: unknown key"),
    ("listen-not-list", with_change("listen", "127.0.0.1"), "listen: expected a list"),
    ("listen-empty", with_change("listen", []), "listen: expected at least one"),
    (
        "listen-twice",
        with_change("listen", ["127.0.0.1:1053", "127.0.0.1:1053"]),
        "listen[1]: 127.0.0.1:1053 is listed twice",
    ),
    ("ttl-string", with_change("answers.ttl", "30"), "answers.ttl: expected an integer"),
    ("ttl-bool", with_change("answers.ttl", True), "answers.ttl: expected an integer"),
    ("ttl-float", with_change("answers.ttl", 1.5), "answers.ttl: expected an integer"),
    ("ttl-negative", with_change("answers.ttl", -1), "answers.ttl: expected an integer from 0"),
    ("ttl-huge", with_change("answers.ttl", 86401), "answers.ttl: expected an integer from 0"),
    ("try-timeout-0", with_change("forward.try_timeout", 0), "forward.try_timeout: expected a"),
    (
        "upstream-bad-ip",
        with_change("upstreams", ["10.0.0.1", "10.0.0.300"]),
        "upstreams[1]: '10.0.0.300' is not an IP address",
    ),
    ("upstreams-empty", with_change("upstreams", []), "upstreams: expected at least one"),
    ("upstream-not-string", with_change("upstreams", [53]), "upstreams[0]: expected 'IP'"),
    ("bad-port", with_change("listen", ["127.0.0.1:70000"]), "listen[0]: '70000' is not a port"),
    ("port-0", with_change("listen", ["127.0.0.1:0"]), "listen[0]: '0' is not a port"),
    ("bad-port-v6", with_change("listen", ["[::1]:x"]), "listen[0]: 'x' is not a port"),
    ("bad-bracket", with_change("listen", ["[::1"]), "listen[0]: '[::1' is not '[IPv6]:PORT'"),
    ("hostname", with_change("listen", ["localhost:53"]), "listen[0]: 'localhost' is not an IP"),
    ("bad-cidr", with_change("allow", ["10.0.0.0/33"]), "allow[0]: '10.0.0.0/33' is not an IP"),
    (
        "bad-when-unknown",
        with_change("answers.when_unknown", "maybe"),
        "answers.when_unknown: expected one of forward, servfail, got 'maybe'",
    ),
    ("bad-deny", with_change("deny", "ignore"), "deny: expected one of refuse, drop"),
    ("deny-number", with_change("deny", 1), "deny: expected a non-empty string"),
    (
        "unknown-placeholder",
        with_change("services.vpc.domains", ["vpc.{zone}.aliyuncs.com"]),
        "services.vpc.domains[0]: unknown placeholder {zone}",
    ),
    (
        "invalid-domain",
        with_change("services.vpc.domains", ["-vpc.aliyuncs.com"]),
        "services.vpc.domains[0]: '-vpc.aliyuncs.com' is not a valid domain name",
    ),
    (
        "single-label-domain",
        with_change("services.vpc.domains", ["localhost"]),
        "services.vpc.domains[0]: 'localhost' is not a valid domain name",
    ),
    (
        "domain-not-string",
        with_change("services.vpc.domains", [{"region": None}]),
        "services.vpc.domains[0]: expected a domain name",
    ),
    (
        "duplicate-domain",
        with_change("services.vpc.domains", ["x.com", "ECI-VPC.{region}.aliyuncs.com"]),
        "services.vpc.domains[1]: 'eci-vpc.cn-hangzhou.aliyuncs.com' is already owned by "
        "service 'eci'",
    ),
    (
        "service-empty-domains",
        with_change("services.vpc.domains", []),
        "services.vpc.domains: expected at least one domain",
    ),
    (
        "service-no-domains",
        with_change("services.vpc.domains", ...),
        "services.vpc.domains: expected at least one domain",
    ),
    (
        "service-null",
        with_change("services.vpc", None),
        "services.vpc.domains: expected at least one domain",
    ),
    (
        "bad-service-name",
        with_change("services.ECI", {"domains": ["a.example.com"]}),
        "services.ECI: expected a service name",
    ),
    ("bad-static-ip", with_change("services.eci.static", ["fd00::g"]), "services.eci.static[0]:"),
    (
        "deadline-below-try",
        with_change("forward.deadline", 0.2),
        "forward.deadline: expected at least try_timeout (0.5), got 0.2",
    ),
    ("region-missing", with_change("region", ...), "region: is required"),
    ("region-bad", with_change("region", "CN Hangzhou"), "region: expected a region id"),
    ("services-list", with_change("services", ["eci"]), "services: expected a mapping"),
    ("answers-string", with_change("answers", "fast"), "answers: expected a mapping"),
    ("top-level-list", ["region", "cn-hangzhou"], "(top level): expected a mapping"),
    ("top-level-string", "region: cn-hangzhou", "(top level): expected a mapping"),
]


@pytest.mark.parametrize(("data", "expected"), [pytest.param(d, e, id=i) for i, d, e in MISTAKES])
def test_mistake_is_reported_with_its_path(data, expected):
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert any(p.startswith(expected) for p in info.value.problems), info.value.problems
    assert str(info.value) == "\n".join(info.value.problems)


def test_several_mistakes_reported_at_once():
    data = with_change("answers.ttl", "x")
    data["upstreams"] = ["10.0.0.300"]
    data["forward"]["bar"] = 1
    data["services"]["vpc"]["domains"] = ["a.{zone}.com"]
    data["deny"] = "ignore"
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    paths = sorted(p.split(":", 1)[0] for p in info.value.problems)
    assert paths == [
        "answers.ttl",
        "deny",
        "forward.bar",
        "services.vpc.domains[0]",
        "upstreams[0]",
    ]


FLOW_UNQUOTED = """\
region: cn-hangzhou
services:
  eci:
    domains: [eci-vpc.{region}.aliyuncs.com]
"""
FLOW_QUOTED = FLOW_UNQUOTED.replace("[eci-vpc.{region}.aliyuncs.com]", '["eci-vpc.{region}.x.com"]')
BLOCK = FLOW_UNQUOTED.replace("[eci-vpc.{region}.aliyuncs.com]", "\n      - eci.{region}.x.com")


def test_unquoted_placeholder_in_flow_list_is_a_clear_error(tmp_path):
    path = tmp_path / "pldns.yaml"
    path.write_text(FLOW_UNQUOTED)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}: not valid YAML")
    message = problem[len(str(path)) :]
    assert "line 4" in message
    assert "quote templated names" in message  # tells the user how to fix it


@pytest.mark.parametrize(
    ("text", "domain"),
    [(FLOW_QUOTED, "eci-vpc.cn-hangzhou.x.com"), (BLOCK, "eci.cn-hangzhou.x.com")],
    ids=["flow-quoted", "block-list"],
)
def test_templated_names_that_parse(tmp_path, text, domain):
    path = tmp_path / "pldns.yaml"
    path.write_text(text)
    config = load_config(path)
    assert config.services[0].domains == (domain,)
    assert config.source == str(path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "region: is required"),
        ("region: [unclosed\n", "not valid YAML"),
        ("region: cn-hangzhou\n  bad: indent\n", "not valid YAML"),
    ],
    ids=["empty-file", "broken-yaml", "bad-indent"],
)
def test_load_config_errors(tmp_path, text, expected):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert expected in info.value.problems[0]
    assert "hint" not in info.value.problems[0]


def test_load_config_missing_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert "cannot read" in info.value.problems[0]


def test_shipped_config_is_valid():
    config = load_config(Path(__file__).parents[1] / "config" / "pldns.yaml")
    names = [d for s in config.services for d in s.domains]
    assert "eci-vpc.cn-hangzhou.aliyuncs.com" in names
    assert all("{" not in d for d in names)

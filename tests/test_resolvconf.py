"""resolv.conf parsing and upstream expansion, with an injected reader (no files, no network)."""

from __future__ import annotations

import pytest

from pldns.config import parse_config
from pldns.config.resolvconf import parse_resolv_conf, upstream_addresses
from pldns.config.schema import ConfigError
from pldns.dns.settings import HostPort


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nameserver 10.0.0.2\nnameserver 10.0.0.3\n", ["10.0.0.2", "10.0.0.3"]),
        ("# nameserver 1.1.1.1\n; nameserver 8.8.8.8\nnameserver 10.0.0.2\n", ["10.0.0.2"]),
        ("search corp.example\noptions ndots:5 timeout:1\nnameserver 10.0.0.2\n", ["10.0.0.2"]),
        ("nameserver fe80::1%eth0\nnameserver 2001:DB8::53\n", ["fe80::1", "2001:db8::53"]),
        ("nameserver\nnameserver banana\nnameserver 10.0.0.300\nnameserver 10.0.0.4", ["10.0.0.4"]),
        ("nameserver\t10.0.0.5   # the IDC resolver\n", ["10.0.0.5"]),
        ("nameservers 10.0.0.6\ndomain x\n", []),
        ("", []),
        ("\x00\xff garbage\n\n   \n", []),
    ],
    ids=[
        "two",
        "comments",
        "search-options",
        "ipv6-zone",
        "junk",
        "tab-and-comment",
        "not-nameserver",
        "empty",
        "binary-junk",
    ],
)
def test_parse_resolv_conf(text, expected):
    assert parse_resolv_conf(text) == expected


def config(listen, upstreams):
    return parse_config({"region": "cn-hangzhou", "listen": listen, "upstreams": upstreams})


def reader(text):
    def read(path):
        assert path == "/etc/resolv.conf"
        return text

    return read


def hp(text):
    host, _, port = text.rpartition(":")
    return HostPort(host.strip("[]"), int(port))


@pytest.mark.parametrize(
    ("listen", "upstreams", "resolv", "expected"),
    [
        (
            ["127.0.0.1:1053"],
            ["resolv.conf"],
            "nameserver 10.0.0.2\nnameserver 10.0.0.3\n",
            ["10.0.0.2:53", "10.0.0.3:53"],
        ),
        (
            ["127.0.0.1:53"],
            ["resolv.conf"],
            "nameserver 127.0.0.1\nnameserver 10.0.0.2\n",
            ["10.0.0.2:53"],
        ),
        (
            ["0.0.0.0:53"],
            ["resolv.conf"],
            "nameserver 127.0.0.1\nnameserver 127.0.0.53\nnameserver 192.0.2.53\n",
            ["192.0.2.53:53"],
        ),
        (["127.0.0.1:1053"], ["resolv.conf"], "nameserver 127.0.0.1\n", ["127.0.0.1:53"]),
        (
            ["127.0.0.1:53"],
            ["10.0.0.2", "resolv.conf", "[2001:db8::1]:5353"],
            "nameserver 10.0.0.2\nnameserver 10.0.0.3\n",
            ["10.0.0.2:53", "10.0.0.3:53", "[2001:db8::1]:5353"],
        ),
        (
            ["127.0.0.1:53"],
            ["127.0.0.1:5353", "10.0.0.2", "10.0.0.2"],
            "",
            ["127.0.0.1:5353", "10.0.0.2:53"],
        ),
    ],
    ids=[
        "expands",
        "skips-own-listen",
        "wildcard-skips-loopback",
        "other-port-kept",
        "mixed-dedup",
        "explicit-other-port",
    ],
)
def test_upstream_addresses(listen, upstreams, resolv, expected):
    got = upstream_addresses(config(listen, upstreams), read=reader(resolv))
    assert got == tuple(hp(e) for e in expected)


@pytest.mark.parametrize(
    ("listen", "upstreams", "resolv", "expected"),
    [
        (
            ["127.0.0.1:53"],
            ["resolv.conf"],
            "nameserver 127.0.0.1\n",
            "upstreams[0]: resolv.conf (/etc/resolv.conf) has no nameserver",
        ),
        (
            ["0.0.0.0:53"],
            ["resolv.conf"],
            "nameserver 127.0.0.53\nnameserver 127.0.0.1\n",
            "upstreams[0]: resolv.conf",
        ),
        (["127.0.0.1:53"], ["resolv.conf"], "# empty\n", "upstreams[0]: resolv.conf"),
        (
            ["127.0.0.1:53"],
            ["10.0.0.2", "127.0.0.1"],
            "",
            "upstreams[1]: 127.0.0.1:53 is pldns's own listen address",
        ),
        (
            ["[::1]:5353"],
            ["[::1]:5353"],
            "",
            "upstreams[0]: [::1]:5353 is pldns's own listen address",
        ),
        (["0.0.0.0:53"], ["127.0.0.1"], "", "upstreams[0]: 127.0.0.1:53 is pldns's own"),
    ],
    ids=[
        "all-skipped",
        "wildcard-all-loopback",
        "no-nameserver",
        "explicit-self",
        "v6-self",
        "wildcard-self",
    ],
)
def test_upstream_loops_are_errors(listen, upstreams, resolv, expected):
    with pytest.raises(ConfigError) as info:
        upstream_addresses(config(listen, upstreams), read=reader(resolv))
    assert any(p.startswith(expected) for p in info.value.problems), info.value.problems


def test_unreadable_resolv_conf():
    def read(path):
        raise FileNotFoundError(2, "No such file or directory")

    with pytest.raises(ConfigError) as info:
        upstream_addresses(config(["127.0.0.1:53"], ["10.0.0.2", "resolv.conf"]), read=read)
    assert info.value.problems == [
        "upstreams[1]: cannot read /etc/resolv.conf: No such file or directory"
    ]

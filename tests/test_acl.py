"""The client allow list."""

from __future__ import annotations

import pytest

import pldns.dns.acl
from pldns.config.dns import DEFAULT_ALLOW
from pldns.dns.acl import Acl

ACL = Acl(["127.0.0.0/8", "10.0.0.0/8", "192.168.1.0/24", "::1/128", "fd00::/8", "fe80::/10"])


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1", True),
        ("127.255.255.254", True),
        ("10.20.30.40", True),
        ("192.168.1.200", True),
        ("192.168.2.1", False),
        ("8.8.8.8", False),
        ("11.0.0.1", False),
        ("0.0.0.0", False),
        ("::1", True),
        ("::2", False),
        ("fd12:3456::1", True),
        ("fc00::1", False),
        ("2001:db8::1", False),
        ("fe80::1%eth0", True),
        ("::ffff:127.0.0.1", True),
        ("::ffff:10.1.2.3", True),
        ("::ffff:8.8.8.8", False),
        ("::ffff:192.168.2.1", False),
        ("", False),
        ("banana", False),
        ("1.2.3", False),
        ("999.1.1.1", False),
        ("10", False),
        ("::g", False),
        (" 127.0.0.1", False),
        ("127.0.0.1/32", False),
        ("%eth0", False),
    ],
    ids=lambda v: repr(v) if isinstance(v, str) else None,
)
def test_allowed(host, allowed):
    assert ACL.allowed(host) is allowed
    assert ACL.allowed(host) is allowed  # cached answer is the same


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1", True),
        ("100.100.2.136", True),
        ("172.31.255.255", True),
        ("172.32.0.1", False),
        ("fe80::1", True),
        ("fdff::1", True),
        ("::ffff:192.168.0.1", True),
        ("1.1.1.1", False),
        ("2606:4700::1111", False),
    ],
)
def test_default_allow_list(host, allowed):
    assert Acl(DEFAULT_ALLOW).allowed(host) is allowed


def test_empty_acl_denies_everything():
    acl = Acl([])
    assert not acl.allowed("127.0.0.1") and not acl.allowed("::1")


def test_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(pldns.dns.acl, "_CACHE_MAX", 100)
    acl = Acl(["10.0.0.0/8"])
    for i in range(1000):
        acl.allowed(f"10.0.{i >> 8}.{i & 255}")
        assert len(acl.verdicts) <= 100
    assert acl.allowed("10.0.0.1") and not acl.allowed("11.0.0.1")


def test_own_listen_addresses_are_always_allowed() -> None:
    acl = Acl(["10.0.0.0/8"], local=["169.254.20.53", "0.0.0.0", "::", "fd00::53"])
    assert acl.allowed("169.254.20.53")
    assert acl.allowed("::ffff:169.254.20.53")
    assert acl.allowed("fd00::53")
    assert acl.allowed("10.1.2.3")
    assert not acl.allowed("169.254.20.54")
    assert not acl.allowed("127.0.0.1")  # a wildcard listen allows no source by itself
    assert not acl.allowed("8.8.8.8")


def test_default_allow_has_link_local_both_ways() -> None:
    acl = Acl(DEFAULT_ALLOW)
    assert acl.allowed("169.254.20.10") and acl.allowed("fe80::1")
    assert not acl.allowed("192.0.2.1")

"""Real servers that serve CNAME chains into the owned names, on 127.0.0.1 only.

- `Knot`: knotd, authoritative for `aliyuncs.com` (an in-zone chain from one API name to an
  owned one, as Alibaba's docs have users do) and for `corp.test` (a public alias of an owned
  name), `corp.test` DNSSEC-signed by knot itself.
- `ChainUnbound`: unbound as a recursive resolver whose root is that knotd, so it follows the
  chain across zones and answers with the whole chain, as an IDC's resolver would.
- `ChainDnsmasq`: dnsmasq with `cname=` to a `host-record=`.

Every one answers with the public address PUBLIC_IPS at the end of the chain.
"""

from __future__ import annotations

from pathlib import Path

from tests.fakes.peers import _Peer, dnsmasq_base_args, unbound_server
from tests.fakes.proc import OWNED

PUBLIC_IPS = ("100.100.1.2", "100.100.1.3")
IN_ZONE_ALIAS = "alias.cn-hangzhou.aliyuncs.com"  # CNAME OWNED, in the same zone
SIGNED_ALIAS = "api.corp.test"  # CNAME OWNED, from a signed zone
PLAIN_ALIAS = "www.plain.test"
LATE = "acc-vpc.cn-hangzhou.aliyuncs.com"  # owned by a test service that has no address yet
LATE_ALIAS = "alias2.cn-hangzhou.aliyuncs.com"  # CNAME LATE
ZONES = (
    "aliyuncs.com",
    "corp.test",
    "plain.test",
)  # CNAME api2.plain.test CNAME OWNED (unsigned, two links)


class Knot(_Peer):
    binary = "knotd"

    def command(self) -> list[str]:
        d = self.workdir
        publics = "".join(f"eci-vpc.cn-hangzhou A {ip}\n" for ip in PUBLIC_IPS)
        (d / "aliyuncs.com.zone").write_text(
            "$ORIGIN aliyuncs.com.\n$TTL 300\n"
            "@ SOA ns1 hostmaster 1 3600 600 86400 300\n@ NS ns1\nns1 A 127.0.0.1\n"
            f"alias.cn-hangzhou CNAME {OWNED}.\n{publics}"
            f"alias2.cn-hangzhou CNAME {LATE}.\nacc-vpc.cn-hangzhou A {PUBLIC_IPS[0]}\n"
        )
        (d / "corp.test.zone").write_text(
            "$ORIGIN corp.test.\n$TTL 300\n"
            "@ SOA ns1 hostmaster 1 3600 600 86400 300\n@ NS ns1\nns1 A 127.0.0.1\n"
            f"api CNAME {OWNED}.\n"
        )
        (d / "plain.test.zone").write_text(
            "$ORIGIN plain.test.\n$TTL 300\n"
            "@ SOA ns1 hostmaster 1 3600 600 86400 300\n@ NS ns1\nns1 A 127.0.0.1\n"
            f"www CNAME api2\napi2 CNAME {OWNED}.\n"
        )
        conf = d / "knot.conf"
        conf.write_text(
            f"server:\n    listen: {self.host}@{self.port}\n    rundir: {d}\n"
            f"database:\n    storage: {d}\n"
            "log:\n  - target: stderr\n    any: info\n"
            f"template:\n  - id: default\n    storage: {d}\n    zonefile-sync: -1\n"
            "    journal-content: none\n"
            "zone:\n  - domain: aliyuncs.com\n    file: aliyuncs.com.zone\n"
            "  - domain: plain.test\n    file: plain.test.zone\n"
            "  - domain: corp.test\n    file: corp.test.zone\n    dnssec-signing: on\n"
        )
        return [self.path(), "-c", str(conf)]


class ChainUnbound(_Peer):
    """unbound resolving the knotd zones through `root` (host, port), a stub for each; its
    queries leave from 127.0.0.1 only (see unbound_server), so no other name gets far."""

    binary = "unbound"

    def __init__(self, workdir: Path, port: int, root: tuple[str, int]) -> None:
        super().__init__(workdir, port)
        self.root = root

    def command(self) -> list[str]:
        conf = self.workdir / "unbound.conf"
        stubs = "".join(
            f'stub-zone:\n  name: "{zone}."\n  stub-addr: {self.root[0]}@{self.root[1]}\n'
            for zone in ZONES
        )
        conf.write_text(
            unbound_server(self.workdir, self.port)
            + '  local-zone: "corp.test." nodefault\n'
            + '  local-zone: "plain.test." nodefault\n'
            + stubs
            + "remote-control:\n  control-enable: no\n"
        )
        return [self.path(), "-d", "-c", str(conf)]


class ChainDnsmasq(_Peer):
    binary = "dnsmasq"

    def command(self) -> list[str]:
        hosts = [f"--host-record={OWNED},{ip}" for ip in PUBLIC_IPS[:1]]
        return [
            self.path(),
            *dnsmasq_base_args(self.port),
            "--local=/test/",
            "--local=/aliyuncs.com/",
            *hosts,
            f"--cname={PLAIN_ALIAS},{OWNED}",
        ]

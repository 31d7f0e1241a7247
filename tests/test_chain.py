"""A real forwarding resolver in front of pldns, the way CoreDNS uses it: only the API zone
(aliyuncs.com) goes to pldns, every other name to the normal upstream.

    client (dnspython, dig) -> unbound | dnsmasq --aliyuncs.com--> pldns --other--> fake upstream
                                                  \\---------- everything else ----/

Owned names come back with the endpoint IPs (and are never forwarded), AAAA of an owned name
is NODATA, other names of the zone and other zones are what the upstream answered. All on
127.0.0.1, with bounded waits; every process is stopped at teardown.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from tests.fakes.peers import dnsmasq_base_args, unbound_server
from tests.fakes.proc import OWNED, OWNED_2, OWNED_IPS, free_port
from tests.fakes.upstream import FakeUpstream

OTHER = "www.example.test"
OTHER_IP = "192.0.2.10"
ZONE_OTHER = "oss-cn-hangzhou.aliyuncs.com"  # in the zone, not owned: pldns forwards it
ZONE_OTHER_IP = "192.0.2.20"
PUBLIC_IP = "100.100.36.1"  # what the public DNS says for an owned name (100.64.0.0/10)
START_TIMEOUT = 10.0


def binary(name: str) -> str | None:
    return shutil.which(name) or (
        f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None
    )


class Forwarder:
    """unbound or dnsmasq on 127.0.0.1:<port>, started and stopped by its own PID."""

    def __init__(self, command: list[str], port: int, log: Path) -> None:
        self.command = command
        self.port = port
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> Forwarder:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        end = time.monotonic() + START_TIMEOUT
        probe = dns.message.make_query("localhost.", "A")
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.command[0]} exited {self.proc.returncode}:\n{self.log()}"
                )
            try:
                dns.query.udp(probe, "127.0.0.1", port=self.port, timeout=0.2)
                return self
            except (dns.exception.Timeout, OSError):
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.command[0]} did not answer in {START_TIMEOUT}s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def unbound_command(workdir: Path, port: int, pldns_port: int, upstream_port: int) -> list[str]:
    path = binary("unbound")
    if path is None:
        pytest.skip("unbound is not installed")
    conf = workdir / "unbound.conf"
    conf.write_text(
        unbound_server(workdir, port) + "remote-control:\n"
        "  control-enable: no\n"
        "forward-zone:\n"
        '  name: "aliyuncs.com."\n'
        f"  forward-addr: 127.0.0.1@{pldns_port}\n"
        "forward-zone:\n"
        '  name: "."\n'
        f"  forward-addr: 127.0.0.1@{upstream_port}\n"
    )
    return [path, "-d", "-c", str(conf)]


def dnsmasq_command(workdir: Path, port: int, pldns_port: int, upstream_port: int) -> list[str]:
    path = binary("dnsmasq")
    if path is None:
        pytest.skip("dnsmasq is not installed")
    return [
        path,
        *dnsmasq_base_args(port),
        f"--server=/aliyuncs.com/127.0.0.1#{pldns_port}",
        f"--server=127.0.0.1#{upstream_port}",
    ]


@pytest.fixture(params=["unbound", "dnsmasq"])
def chain(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    upstream: FakeUpstream,
    pldns: Callable[..., Any],
) -> Iterator[tuple[Forwarder, FakeUpstream]]:
    """The fake upstream, pldns forwarding to it, and a real forwarder in front of both."""
    upstream.answer(OTHER, OTHER_IP)
    upstream.answer(ZONE_OTHER, ZONE_OTHER_IP)
    upstream.answer(OWNED, PUBLIC_IP)  # must never be what a client gets
    upstream.answer("localhost", "127.0.0.1")
    server = pldns()
    upstream_port = int(upstream.address.rsplit(":", 1)[1])
    port = free_port()
    make = unbound_command if request.param == "unbound" else dnsmasq_command
    forwarder = Forwarder(
        make(tmp_path, port, server.port, upstream_port), port, tmp_path / f"{request.param}.log"
    )
    forwarder.start()
    try:
        yield forwarder, upstream
    finally:
        forwarder.stop()


def ask(forwarder: Forwarder, name: str, rdtype: str) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    return dns.query.udp(query, "127.0.0.1", port=forwarder.port, timeout=3)


def addresses(reply: dns.message.Message) -> set[str]:
    return {rd.address for rrset in reply.answer for rd in rrset if rrset.rdtype == dns.rdatatype.A}


def test_owned_names_get_the_endpoint_ips(chain: tuple[Forwarder, FakeUpstream]) -> None:
    forwarder, upstream = chain
    for name in (OWNED, OWNED_2, OWNED.upper()):
        reply = ask(forwarder, name, "A")
        assert reply.rcode() == dns.rcode.NOERROR, forwarder.log()
        assert addresses(reply) == set(OWNED_IPS), reply
    assert not upstream.queries(OWNED) and not upstream.queries(OWNED_2)  # never forwarded


def test_owned_aaaa_is_nodata(chain: tuple[Forwarder, FakeUpstream]) -> None:
    forwarder, upstream = chain
    reply = ask(forwarder, OWNED, "AAAA")
    assert reply.rcode() == dns.rcode.NOERROR and not reply.answer, reply
    assert not upstream.queries(OWNED)


def test_other_names_are_what_the_upstream_answered(
    chain: tuple[Forwarder, FakeUpstream],
) -> None:
    forwarder, upstream = chain
    assert addresses(ask(forwarder, OTHER, "A")) == {OTHER_IP}
    # In the API zone but not owned: through pldns, which forwards it to the upstream.
    assert addresses(ask(forwarder, ZONE_OTHER, "A")) == {ZONE_OTHER_IP}
    missing = ask(forwarder, "nothing.example.test", "A")
    assert missing.rcode() == dns.rcode.NXDOMAIN
    assert upstream.queries(ZONE_OTHER) and upstream.queries(OTHER)


def test_dig_through_the_chain(chain: tuple[Forwarder, FakeUpstream]) -> None:
    forwarder, _ = chain
    dig = shutil.which("dig")
    if dig is None:
        pytest.skip("dig is not installed")
    done = subprocess.run(
        [dig, "@127.0.0.1", "-p", str(forwarder.port), OWNED, "A", "+short", "+time=2", "+tries=1"],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert set(done.stdout.split()) == set(OWNED_IPS)

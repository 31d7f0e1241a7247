"""Real DNS servers from Debian as test peers, on 127.0.0.1 only, stopped by their PID.

Both serve the same small zone, `example.test`:
    www.example.test   A    192.0.2.1, 192.0.2.2
    big.example.test   TXT  BIG_TXT_RECORDS strings of 60 bytes (~2.8 KB: TC=1 over UDP)
    anything else under example.test: NXDOMAIN
and refuse every other name, so they never send a query anywhere.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query

ZONE = "example.test"
WWW = "www.example.test"
WWW_IPS = ("192.0.2.1", "192.0.2.2")
BIG = "big.example.test"
MISSING = "missing.example.test"
BIG_TXT_RECORDS = 40
START_TIMEOUT = 10.0


def big_txt_strings() -> list[str]:
    return [f"{i:03d}-" + "y" * 55 for i in range(BIG_TXT_RECORDS)]


def dnsmasq_base_args(port: int) -> list[str]:
    """dnsmasq in the foreground on 127.0.0.1:port, reading no system files, logging to stderr."""
    return [
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        "--conf-file=/dev/null",
        "--bind-interfaces",
        "--listen-address=127.0.0.1",
        f"--port={port}",
        "--pid-file=",
        "--log-facility=-",
        "--local-ttl=60",
    ]


class _Peer:
    binary = ""

    def __init__(self, workdir: Path, port: int) -> None:
        self.workdir = workdir
        self.port = port
        self.host = "127.0.0.1"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "peer.log"

    @classmethod
    def available(cls) -> bool:
        return shutil.which(cls.binary) is not None or Path(f"/usr/sbin/{cls.binary}").exists()

    @classmethod
    def path(cls) -> str:
        return shutil.which(cls.binary) or f"/usr/sbin/{cls.binary}"

    @property
    def addr(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self):  # type: ignore[no-untyped-def]
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = self.command()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        end = time.monotonic() + START_TIMEOUT
        query = dns.message.make_query(WWW, "A")
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited {self.proc.returncode}:\n{self.log()}")
            try:
                dns.query.udp(query, self.host, port=self.port, timeout=0.2)
                return self
            except (dns.exception.Timeout, OSError):
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{cmd[0]} did not answer within {START_TIMEOUT}s:\n{self.log()}")

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def unbound_server(workdir: Path, port: int) -> str:
    """unbound's `server:` section for a test instance: loopback only, foreground-friendly,
    no chroot/user switch, no DNSSEC, allowed to forward to 127.0.0.1, .test not blocked."""
    return (
        "server:\n"
        f"  interface: 127.0.0.1@{port}\n"
        f"  port: {port}\n"
        "  do-ip4: yes\n"
        "  do-ip6: no\n"
        "  do-udp: yes\n"
        "  do-tcp: yes\n"
        '  chroot: ""\n'
        '  username: ""\n'
        f'  directory: "{workdir}"\n'
        '  pidfile: ""\n'
        "  use-syslog: no\n"
        '  logfile: ""\n'
        "  verbosity: 1\n"
        "  num-threads: 1\n"
        '  module-config: "iterator"\n'
        "  do-not-query-localhost: no\n"
        "  outgoing-interface: 127.0.0.1\n"
        "  access-control: 127.0.0.0/8 allow\n"
        '  local-zone: "test." nodefault\n'
    )


class Unbound(_Peer):
    binary = "unbound"

    def command(self) -> list[str]:
        txt = "".join(f"  local-data: '{BIG}. 60 IN TXT \"{s}\"'\n" for s in big_txt_strings())
        www = "".join(f'  local-data: "{WWW}. 60 IN A {ip}"\n' for ip in WWW_IPS)
        conf = self.workdir / "unbound.conf"
        conf.write_text(
            unbound_server(self.workdir, self.port) + '  local-zone: "." refuse\n'
            f'  local-zone: "{ZONE}." static\n'
            f"{www}{txt}"
            "remote-control:\n"
            "  control-enable: no\n"
        )
        return [self.path(), "-d", "-c", str(conf)]


class Dnsmasq(_Peer):
    """dnsmasq serving example.test; with `forward_to` ("127.0.0.1#PORT") it forwards every
    other name there, so it can stand in front of pldns as a client-side forwarder."""

    binary = "dnsmasq"

    def __init__(self, workdir: Path, port: int, forward_to: str | None = None) -> None:
        super().__init__(workdir, port)
        self.forward_to = forward_to

    def command(self) -> list[str]:
        servers = [f"--server={self.forward_to}"] if self.forward_to else []
        txt = [f"--txt-record={BIG},{s}" for s in big_txt_strings()]
        www = [f"--address=/{WWW}/{ip}" for ip in WWW_IPS]
        return [
            self.path(),
            *dnsmasq_base_args(self.port),
            f"--local=/{ZONE}/",
            *servers,
            *www,
            *txt,
        ]

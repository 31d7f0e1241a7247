"""pldns under test: a `pldns serve` subprocess, or an App in a background thread's loop.

Both write/take a config mapping (what the YAML file holds) and expose `host`, `port` and
`addr` ((host, port), what the client helpers take). Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from tests.fakes.ports import free_port as free_port  # the tests import it from here

REPO = Path(__file__).resolve().parents[2]
READY_LINE = "serving on"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0

# The owned names every base config serves (service "eci", static addresses).
REGION = "cn-hangzhou"
OWNED = "eci-vpc.cn-hangzhou.aliyuncs.com"
OWNED_2 = "eci.cn-hangzhou.aliyuncs.com"
OWNED_IPS = ("192.168.10.5", "192.168.11.5")


def listen_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def base_config(host: str, port: int, upstreams: list[str]) -> dict[str, Any]:
    """A small config: one owned service, short forwarding timeouts, the given upstreams."""
    return {
        "region": REGION,
        "listen": [listen_address(host, port)],
        "upstreams": list(upstreams),
        "forward": {"try_timeout": 0.5, "deadline": 2.0},
        "tcp": {"idle_timeout": 5.0},
        # No HTTP endpoint (parallel servers would share 9153) and no lame duck (fast stops),
        # unless a test asks for them.
        "http": {"listen": "off"},
        "lifecycle": {"lame_duck": 0, "drain": 2.0},
        "services": {
            "eci": {
                "domains": ["eci-vpc.{region}.aliyuncs.com", "eci.{region}.aliyuncs.com"],
                "static": list(OWNED_IPS),
            }
        },
    }


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`overrides` over `base`, one level of sections deep (forward, tcp, ... merge)."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "services":
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


class PldnsProcess:
    """`python -m pldns serve --config FILE` with stdout+stderr in a log file."""

    def __init__(self, config: dict[str, Any], workdir: Path, name: str = "pldns") -> None:
        self.config = config
        self.workdir = workdir
        self.config_path = workdir / f"{name}.yaml"
        self.log_path = workdir / f"{name}.log"
        first = str(config["listen"][0])
        host, _, port = first.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def addr(self) -> tuple[str, int]:
        return (self.host, self.port)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        with open(self.log_path, "wb") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "pldns", "serve", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=env,
            )

    def start(self, timeout: float = START_TIMEOUT) -> PldnsProcess:
        """Start and wait until the log says it is serving (listeners bound)."""
        self.proc = self._spawn()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if READY_LINE in self.log():
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"pldns exited {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"pldns did not start within {timeout}s:\n{self.log()}")

    def run_to_exit(self, timeout: float = START_TIMEOUT) -> tuple[int, str]:
        """Run a pldns that is expected to exit on its own; its exit status and output."""
        self.proc = self._spawn()
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"pldns kept running:\n{self.log()}") from None
        return rc, self.log()

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, wait, SIGKILL if it hangs. Returns the exit status (None if never started)."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
                msg = f"pldns ignored SIGTERM for {timeout}s:\n{self.log()}"
                raise AssertionError(msg) from None
        return proc.returncode

    def check_clean_exit(self) -> None:
        """Stop it and assert a clean shutdown: status 0, no traceback in its output."""
        rc = self.stop()
        log = self.log()
        assert rc == 0, f"pldns exited {rc}:\n{log}"
        assert "Traceback" not in log, f"pldns logged a traceback:\n{log}"


class InProcessPldns:
    """An App run in a background thread's event loop, so a test can read `app.stats`."""

    def __init__(self, config: dict[str, Any]) -> None:
        from pldns.config import parse_config

        self.config = parse_config(config)
        address = self.config.listen[0]
        self.host, self.port = address.host, address.port
        self.loop = asyncio.new_event_loop()
        self.thread: threading.Thread | None = None
        self.app: Any = None

    @property
    def addr(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def stats(self) -> Any:
        return self.app.stats

    def start(self) -> InProcessPldns:
        from pldns.app import App

        loop = self.loop
        self.thread = threading.Thread(target=loop.run_forever, name="pldns-app", daemon=True)
        self.thread.start()

        async def build() -> Any:
            app = App(self.config)
            await app.start()
            return app

        self.app = asyncio.run_coroutine_threadsafe(build(), loop).result(START_TIMEOUT)
        return self

    def call(self, fn: Any, timeout: float = 5.0) -> Any:
        """Run fn() on the app's loop and return its result (to read state safely)."""

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def stop(self) -> None:
        if self.thread is None:
            return
        if self.app is not None:
            fut = asyncio.run_coroutine_threadsafe(self.app.stop(drain=2.0), self.loop)
            fut.result(STOP_TIMEOUT)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(STOP_TIMEOUT)
        if not self.thread.is_alive():
            self.loop.close()
        self.thread = None

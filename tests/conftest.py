"""Shared fixtures for network tests: fake upstreams, pldns itself, real peer servers.

Everything binds to 127.0.0.1 or ::1 only, and every process or thread started here is
stopped at teardown with bounded waits. See tests/fakes/ for the classes behind them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from tests.fakes.mmsg import load_mmsg
from tests.fakes.peers import Dnsmasq, Unbound
from tests.fakes.proc import (
    InProcessPldns,
    PldnsProcess,
    base_config,
    free_port,
    merge,
)
from tests.fakes.upstream import FakeUpstream

# No test may reach the ECS metadata address (100.100.100.200) through the SDK's default
# credentials chain: tests run on loopback only. (Nothing above imports the SDK, which reads
# these variables when it is imported.)
os.environ.setdefault("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true")
# Tools installed next to the interpreter (a venv's bin/: pldns, hadolint, ruff) are found even
# when the venv is not activated (`.venv/bin/python -m pytest`).
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
# Nor through a proxy: the SDK and urllib honour these, and loopback traffic must stay there.
for _var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
    os.environ.pop(_var, None)

# Property-based tests (tests/test_*_properties.py): a bounded run, no example database in
# the repository, no deadline (a loaded machine makes single examples slow, not wrong).
# HYPOTHESIS_PROFILE=long runs many more examples when hunting for a bug.
settings.register_profile(
    "ci",
    max_examples=300,
    deadline=None,
    database=None,
    derandomize=False,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
settings.register_profile("long", parent=settings.get_profile("ci"), max_examples=20000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def fake_upstreams() -> Iterator[Callable[..., FakeUpstream]]:
    """Factory: `fake_upstreams(host="127.0.0.1", default=Behaviour(...))` -> a started fake.

    All fakes made are stopped at teardown, and must not have hit an internal error.
    """
    made: list[FakeUpstream] = []

    def make(**kwargs: Any) -> FakeUpstream:
        fake = FakeUpstream(**kwargs).start()
        made.append(fake)
        return fake

    yield make
    for fake in made:
        fake.stop()
    for fake in made:
        assert not fake.errors, f"fake upstream errors: {fake.errors!r}"


@pytest.fixture
def upstream(fake_upstreams: Callable[..., FakeUpstream]) -> FakeUpstream:
    """One fake upstream on 127.0.0.1 (NXDOMAIN for names not programmed)."""
    return fake_upstreams()


@pytest.fixture
def pldns(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    fake_upstreams: Callable[..., FakeUpstream],
) -> Iterator[Callable[..., Any]]:
    """Factory: start pldns on a free loopback port and return its handle.

        server = pldns()                                   # forwards to the `upstream` fake
        server = pldns(upstreams=[a.address, b.address], forward={"deadline": 1.0})
        server = pldns(host="::1", tcp={"max_connections": 2}, allow=["10.0.0.0/8"])
        server = pldns(in_process=True)                    # App in a thread: server.stats

    Keyword sections are merged over `base_config` (forward/tcp/answers per key; others
    replace). The handle has `.addr` (host, port), `.host`, `.port`, and for a subprocess
    `.log()`. At teardown a subprocess gets SIGTERM and must exit 0 with no traceback.
    """
    started: list[PldnsProcess | InProcessPldns] = []

    def start(
        *,
        upstreams: list[str] | None = None,
        host: str = "127.0.0.1",
        in_process: bool = False,
        **overrides: Any,
    ) -> PldnsProcess | InProcessPldns:
        if upstreams is None:
            upstreams = [request.getfixturevalue("upstream").address]
        config = merge(base_config(host, free_port(host), upstreams), overrides)
        server: PldnsProcess | InProcessPldns
        if in_process:
            server = InProcessPldns(config)
        else:
            server = PldnsProcess(config, tmp_path, name=f"pldns{len(started)}")
        started.append(server)
        return server.start()

    yield start
    problems = []
    for server in started:
        try:
            if isinstance(server, PldnsProcess):
                server.check_clean_exit()
            else:
                server.stop()
        except AssertionError as err:
            problems.append(str(err))
    assert not problems, "\n".join(problems)


def _have_v6_loopback() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture
def v6_loopback() -> None:
    """Skip the test when ::1 cannot be bound here."""
    if not _have_v6_loopback():
        pytest.skip("::1 is not available")


@pytest.fixture
def unbound(tmp_path: Path) -> Iterator[Unbound]:
    """unbound on 127.0.0.1:<free port> serving example.test from local-data (see peers.py)."""
    if not Unbound.available():
        pytest.skip("unbound is not installed")
    server = Unbound(tmp_path / "unbound", free_port())
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[Dnsmasq]:
    """dnsmasq on 127.0.0.1:<free port> serving example.test locally (see peers.py)."""
    if not Dnsmasq.available():
        pytest.skip("dnsmasq is not installed")
    server = Dnsmasq(tmp_path / "dnsmasq", free_port())
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def root_logging() -> Iterator[None]:
    """For a test that calls logs.setup() (a reload does): the root logger's handlers and
    level put back after it. Left behind, its handler writes to a stream pytest has closed,
    and every later test's log record costs a 'Logging error' traceback."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


@pytest.fixture(scope="session")
def mmsg(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """pldns.dns._mmsg: the build's own, or compiled from its source (tests/fakes/mmsg.py)."""
    return load_mmsg(tmp_path_factory.mktemp("mmsg"))

"""Operating a real `pldns serve`: metrics, health and readiness, reload, shutdown, leaks, logs.

Each test runs pldns as a subprocess on loopback with its HTTP endpoint on a free port, a
fake upstream, and real clients (dnspython, urllib, `pldns status`). The owned name's
addresses come from the PrivateLink source through the real SDK, against the OpenAPI
emulator (tests/emulator), signed with an AccessKey whose secret only a credentials file
holds: the emulator checks the signatures, so the secret is really in use. At teardown the
log, /status, /metrics and every file the server wrote are searched for it (the log also
has the redaction filter behind it; /status, /metrics and files have no such net).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.emulator import OpenApiEmulator
from tests.fakes.proc import OWNED, OWNED_IPS, REPO, PldnsProcess, base_config, free_port, merge
from tests.fakes.upstream import FakeUpstream

SECRET = "pldns-ops-test-secret-9f3kQ"
KEY_ID = "LTAIopstestkey0001"
LEAK_NAME = "ecs.cn-hangzhou.aliyuncs.com"
LEAK_IP = "100.100.7.7"
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with NO_PROXY.open(f"http://127.0.0.1:{port}{path}", timeout=3) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def metric(port: int, name: str, **labels: str) -> float:
    """The value of one sample (0 if absent) from a fresh scrape."""
    _, text = http_get(port, "/metrics")
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def ask(
    server: PldnsProcess, name: str, rdtype: str = "A", tcp: bool = False
) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    if tcp:
        return dns.query.tcp(query, server.host, port=server.port, timeout=3)
    return dns.query.udp(query, server.host, port=server.port, timeout=3)


def addresses(reply: dns.message.Message) -> set[str]:
    return {rr.address for rrset in reply.answer for rr in rrset if hasattr(rr, "address")}


def wait_until(check: Callable[[], bool], timeout: float = 5.0, every: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(every)
    return check()


class Ops(PldnsProcess):
    """A pldns subprocess with its HTTP endpoint on a free port."""

    def __init__(self, config: dict[str, Any], workdir: Path, name: str = "ops") -> None:
        self.http_port = free_port()
        config = merge(config, {"http": {"listen": f"127.0.0.1:{self.http_port}"}})
        super().__init__(config, workdir, name)

    def _spawn(self) -> subprocess.Popen[bytes]:
        saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("ALIBABA_CLOUD_")}
        os.environ["ALIBABA_CLOUD_ECS_METADATA_DISABLED"] = "true"
        try:
            return super()._spawn()
        finally:
            os.environ.pop("ALIBABA_CLOUD_ECS_METADATA_DISABLED", None)
            os.environ.update(saved)

    def rewrite(self, **overrides: Any) -> None:
        self.config = merge(self.config, overrides)
        text = yaml.safe_dump(self.config, sort_keys=False)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config_path)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)


@pytest.fixture
def cloud(tmp_path: Path) -> Any:
    """The OpenAPI emulator with one ECI endpoint (OWNED_IPS) that only KEY_ID/SECRET may
    read, and the privatelink config sections that reach it with a credentials file."""
    emu = OpenApiEmulator().start()
    try:
        emu.credentials.clear()
        emu.add_credential(KEY_ID, SECRET)
        emu.add_endpoint(
            "ep-eci",
            "com.aliyuncs.privatelink.cn-hangzhou.eci",
            zones=[
                {"zone_id": "cn-hangzhou-h", "eni_ip": OWNED_IPS[0]},
                {"zone_id": "cn-hangzhou-k", "eni_ip": OWNED_IPS[1]},
            ],
        )
        creds = tmp_path / "credentials.ini"
        creds.write_text(
            f"[ops]\ntype = access_key\naccess_key_id = {KEY_ID}\naccess_key_secret = {SECRET}\n"
        )
        sections = {
            "privatelink": {
                "vpc_id": "vpc-test",
                "endpoint": emu.endpoint,
                "protocol": "http",
                "connect_timeout": 2,
                "read_timeout": 5,
                "credentials": {"file": str(creds), "profile": "ops"},
            },
            "sync": {
                "source": "privatelink",
                "interval": 3600,
                "snapshot": str(tmp_path / "s.json"),
            },
            "services": {"eci": {"domains": ["eci-vpc.{region}.aliyuncs.com"]}},
        }
        yield emu, sections
    finally:
        emu.stop()


def no_secret_anywhere(server: Ops, live: bool) -> None:
    """Nothing the server shows or writes holds the secret: log, /status, /metrics, files."""
    shown = server.log()
    for page in ("/status", "/metrics") if live else ():
        with contextlib.suppress(OSError):  # it may be exiting (a test sent SIGTERM)
            shown += http_get(server.http_port, page)[1]
    assert SECRET not in shown, "the AccessKey secret was shown"
    for path in server.workdir.rglob("*"):
        if path.is_file() and path.name != "credentials.ini":
            assert SECRET.encode() not in path.read_bytes(), f"the secret is in {path}"


@pytest.fixture
def ops(tmp_path: Path, fake_upstreams: Callable[..., FakeUpstream], cloud: Any) -> Any:
    emu, sections = cloud
    started: list[Ops] = []

    def start(upstream: FakeUpstream | None = None, **overrides: Any) -> Ops:
        up = upstream or fake_upstreams()
        port = free_port()
        config = merge(merge(base_config("127.0.0.1", port, [up.address]), sections), overrides)
        server = Ops(config, tmp_path, name=f"ops{len(started)}")
        started.append(server)
        server.start()
        if config["sync"]["source"] == "privatelink":
            # The first sync round is done: the SDK signed with the file's secret. (A cap
            # for a loaded machine; it takes well under a second when idle.)
            p = server.http_port
            ok = wait_until(lambda: metric(p, "pldns_table_loaded") == 1, timeout=30)
            assert ok, server.log()
            assert emu.count("ListVpcEndpointZones") >= 1
        return server

    yield start
    problems = []
    for server in started:  # every server is stopped, whatever a check finds
        try:
            if server.proc is not None and server.proc.poll() is None:
                no_secret_anywhere(server, live=True)
        except AssertionError as err:
            problems.append(str(err))
        finally:
            server.stop()
        try:
            no_secret_anywhere(server, live=False)
            assert "Traceback" not in server.log(), server.log()
        except AssertionError as err:
            problems.append(str(err))
    assert not problems, "\n".join(problems)


def test_metrics_move_with_real_queries(ops: Any, upstream: FakeUpstream) -> None:
    upstream.answer("www.example.test", "192.0.2.1")
    server = ops(upstream)
    for _ in range(3):
        assert addresses(ask(server, OWNED)) == set(OWNED_IPS)
    ask(server, OWNED, tcp=True)
    for _ in range(2):
        assert addresses(ask(server, "www.example.test")) == {"192.0.2.1"}
    ask(server, OWNED, "TXT")
    p = server.http_port
    assert metric(p, "pldns_dns_requests_total", proto="udp", type="A") == 5
    assert metric(p, "pldns_dns_requests_total", proto="tcp", type="A") == 1
    assert metric(p, "pldns_dns_requests_total", proto="udp", type="TXT") == 1
    assert metric(p, "pldns_dns_responses_total", rcode="NOERROR", source="owned") == 5
    # The second www.example.test comes from the cache.
    assert metric(p, "pldns_dns_responses_total", rcode="NOERROR", source="upstream") == 1
    assert metric(p, "pldns_dns_responses_total", rcode="NOERROR", source="cache") == 1
    assert metric(p, "pldns_forward_requests_total", upstream=upstream.address) == 1
    assert metric(p, "pldns_dns_request_duration_seconds_count", source="owned") == 5
    assert metric(p, "pldns_owned_ips", service="eci", family="ipv4") == 2
    assert metric(p, "pldns_ready") == 1
    assert metric(p, "pldns_build_info", version=__import__("pldns").__version__) == 1


def test_ready_while_listening_table_is_its_own_condition(ops: Any, tmp_path: Path) -> None:
    """A node whose snapshot is not there yet is ready (it answers, when_unknown decides
    owned names); the table state shows in /status and pldns_table_loaded."""
    snapshot = tmp_path / "mounted" / "snapshot.json"
    server = ops(
        sync={"source": "file", "file": str(snapshot), "poll": 0.2},
        services={"eci": {"domains": [OWNED]}},
    )
    assert http_get(server.http_port, "/healthz") == (200, "ok\n")
    assert http_get(server.http_port, "/readyz") == (200, "ready\n")
    doc = json.loads(http_get(server.http_port, "/status")[1])
    assert doc["ready"] is True
    assert doc["table"]["loaded"] is False and "no table loaded" in doc["table"]["reason"]
    assert metric(server.http_port, "pldns_table_loaded") == 0
    assert metric(server.http_port, "pldns_ready") == 1
    from pldns.dns.table import Addresses
    from pldns.sync.snapshot import Snapshot, encode, write_atomic

    write_atomic(
        snapshot, encode(Snapshot("cn-hangzhou", {"eci": Addresses(("10.1.2.3",))}, time.time()))
    )
    assert wait_until(lambda: addresses(ask(server, OWNED)) == {"10.1.2.3"})
    doc = json.loads(http_get(server.http_port, "/status")[1])
    assert doc["ready"] is True and doc["sync"]["source"] == "file"
    assert doc["table"] == {"loaded": True, "reason": "loaded", "required_for_ready": False}
    assert metric(server.http_port, "pldns_table_loaded") == 1


def test_ready_requires_table_is_the_old_gate(ops: Any, tmp_path: Path) -> None:
    snapshot = tmp_path / "mounted" / "snapshot.json"
    server = ops(
        sync={"source": "file", "file": str(snapshot), "poll": 0.2, "ready_requires_table": True},
        services={"eci": {"domains": [OWNED]}},
    )
    status, body = http_get(server.http_port, "/readyz")
    assert status == 503 and "no table loaded" in body
    from pldns.dns.table import Addresses
    from pldns.sync.snapshot import Snapshot, encode, write_atomic

    write_atomic(
        snapshot, encode(Snapshot("cn-hangzhou", {"eci": Addresses(("10.1.2.3",))}, time.time()))
    )
    assert wait_until(lambda: http_get(server.http_port, "/readyz")[0] == 200)
    assert addresses(ask(server, OWNED)) == {"10.1.2.3"}


def test_lame_duck_then_drain_then_exit_zero(ops: Any, upstream: FakeUpstream) -> None:
    upstream.answer("slow.example.test", "192.0.2.9", delay=1.5)
    server = ops(
        upstream,
        lifecycle={"lame_duck": 1.0, "drain": 3.0},
        forward={"deadline": 3.0, "try_timeout": 2.5},
    )
    result: dict[str, Any] = {}

    def slow_query() -> None:
        result["reply"] = ask(server, "slow.example.test")

    worker = threading.Thread(target=slow_query)
    worker.start()
    upstream.wait_for(1, "slow.example.test")
    server.signal(signal.SIGTERM)
    # Lame duck: not ready, still answering.
    assert wait_until(lambda: http_get(server.http_port, "/readyz")[0] == 503, timeout=2)
    assert addresses(ask(server, OWNED)) == set(OWNED_IPS)
    worker.join(5)
    assert addresses(result["reply"]) == {"192.0.2.9"}, "the in-flight query was lost"
    assert server.proc is not None
    assert server.proc.wait(8) == 0
    assert "draining" in server.log() or "stopped" in server.log()


def test_second_signal_exits_at_once(ops: Any) -> None:
    server = ops(lifecycle={"lame_duck": 30.0})
    server.signal(signal.SIGTERM)
    assert wait_until(lambda: http_get(server.http_port, "/readyz")[0] == 503, timeout=2)
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    assert server.proc is not None
    assert server.proc.wait(5) == 1
    assert time.monotonic() - started < 3


def test_sighup_applies_a_good_config_and_keeps_the_old_on_a_bad_one(ops: Any) -> None:
    server = ops(lifecycle={"reload_poll": 0})
    server.rewrite(services={"eci": {"domains": [OWNED], "static": ["10.9.9.9"]}})
    server.signal(signal.SIGHUP)
    assert wait_until(lambda: addresses(ask(server, OWNED)) == {"10.9.9.9"})
    assert metric(server.http_port, "pldns_config_reloads_total", result="success") == 1
    server.rewrite(answers={"ttl": "soon"})
    server.signal(signal.SIGHUP)
    p = server.http_port
    assert wait_until(lambda: metric(p, "pldns_config_reloads_total", result="failure") == 1)
    assert addresses(ask(server, OWNED)) == {"10.9.9.9"}
    assert "answers.ttl: expected an integer" in server.log()


def test_config_file_edit_is_picked_up(
    ops: Any, fake_upstreams: Callable[..., FakeUpstream]
) -> None:
    server = ops(lifecycle={"reload_poll": 0.2})
    other = fake_upstreams()
    other.answer("moved.example.test", "192.0.2.77")
    extra = free_port()
    server.rewrite(
        upstreams=[other.address],
        listen=[*server.config["listen"], f"127.0.0.1:{extra}"],
        services={"eci": {"domains": [OWNED], "static": ["10.7.7.7"]}},
    )
    assert wait_until(lambda: addresses(ask(server, OWNED)) == {"10.7.7.7"})
    assert addresses(ask(server, "moved.example.test")) == {"192.0.2.77"}
    reply = dns.query.udp(dns.message.make_query(OWNED, "A"), "127.0.0.1", port=extra, timeout=3)
    assert addresses(reply) == {"10.7.7.7"}, "the added listener does not answer"


def test_leak_detector_fires_once_per_name(ops: Any, upstream: FakeUpstream) -> None:
    upstream.answer(LEAK_NAME, LEAK_IP)
    upstream.answer("fine.aliyuncs.com", "47.96.1.1")
    server = ops(upstream, cache={"enabled": False})  # every answer comes from upstream
    for _ in range(3):
        assert addresses(ask(server, LEAK_NAME)) == {LEAK_IP}, "the answer must still be relayed"
    ask(server, "fine.aliyuncs.com")
    assert metric(server.http_port, "pldns_leaks_total") == 3
    assert metric(server.http_port, "pldns_leaked_names") == 1
    assert server.log().count("leak: ecs.cn-hangzhou.aliyuncs.com") == 1
    doc = json.loads(http_get(server.http_port, "/status")[1])
    assert [leak["name"] for leak in doc["leaks"]] == [LEAK_NAME + "."]
    out = subprocess.run(
        [sys.executable, "-m", "pldns", "status", "--url", f"http://127.0.0.1:{server.http_port}"],
        capture_output=True, text=True, timeout=20, cwd=REPO,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "LEAK" in out.stdout and LEAK_NAME in out.stdout
    assert "192.168.10.5" in out.stdout


def test_json_query_log_without_secrets(ops: Any, upstream: FakeUpstream) -> None:
    upstream.answer("www.example.test", "192.0.2.1")
    server = ops(upstream, log={"format": "json", "queries": 1.0, "level": "debug"})
    ask(server, OWNED)
    ask(server, "www.example.test")
    assert wait_until(lambda: server.log().count('"logger": "pldns.query"') >= 2)
    lines = [json.loads(x) for x in server.log().splitlines() if x.startswith("{")]
    queries = [x for x in lines if x["logger"] == "pldns.query"]
    owned = next(x for x in queries if x["name"] == OWNED + ".")
    assert owned["source"] == "owned" and owned["rcode"] == "NOERROR" and owned["type"] == "A"
    assert {"client", "proto", "duration_ms"} <= owned.keys()
    assert any(x["source"] == "upstream" for x in queries)


def test_status_command_exit_codes(ops: Any) -> None:
    server = ops(lifecycle={"lame_duck": 5.0})
    url = f"http://127.0.0.1:{server.http_port}"
    cmd = [sys.executable, "-m", "pldns", "status", "--url", url]
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=REPO)
    assert ok.returncode == 0 and "READY" in ok.stdout
    server.signal(signal.SIGTERM)
    assert wait_until(lambda: http_get(server.http_port, "/readyz")[0] == 503, timeout=2)
    lame = subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=REPO)
    assert lame.returncode == 1 and "NOT READY" in lame.stdout
    server.signal(signal.SIGTERM)  # second signal: do not wait out the lame duck
    gone = subprocess.run(
        [*cmd[:-1], f"http://127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=20
    )
    assert gone.returncode == 2


def test_a_secret_in_the_config_is_refused_without_echoing_it(tmp_path: Path) -> None:
    config = base_config("127.0.0.1", free_port(), ["127.0.0.1:9"])
    config["privatelink"] = {"credentials": {"access_key_secret": SECRET}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    out = subprocess.run(
        [sys.executable, "-m", "pldns", "check", "--config", str(path)],
        capture_output=True, text=True, timeout=20, cwd=REPO,
    )  # fmt: skip
    assert out.returncode == 2
    assert "privatelink.credentials.access_key_secret" in out.stderr
    assert SECRET not in out.stdout + out.stderr


def test_redaction_filter_masks_a_known_secret(
    capsys: pytest.CaptureFixture[str], root_logging: None
) -> None:
    import logging

    from pldns import logs

    os.environ["ALIBABA_CLOUD_ACCESS_KEY_SECRET"] = SECRET
    try:
        logs.setup("info", "text")
        logging.getLogger("pldns.test").warning("oops %s", SECRET)
        logs.setup("info", "json")
        try:
            raise ValueError(SECRET)
        except ValueError:
            logging.getLogger("pldns.test").exception("failed")
    finally:
        del os.environ["ALIBABA_CLOUD_ACCESS_KEY_SECRET"]
    err = capsys.readouterr().err
    assert "oops ***" in err and SECRET not in err

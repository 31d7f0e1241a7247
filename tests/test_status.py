"""The status view: build_status on an in-process App, render_status, and `pldns status`
against canned HTTP servers on loopback and against a running App's own HTTP endpoint.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import dns.message
import dns.rrset
import pytest

from pldns.app import App
from pldns.config import parse_config
from pldns.dns.settings import HostPort
from pldns.dns.table import Addresses
from pldns.dns.wire import encode_name
from pldns.httpapi import HttpApi
from pldns.status import build_status, duration, render_status, status_command
from pldns.sync.loop import table_for
from tests.fakes.proc import base_config, free_port

UPSTREAM = HostPort("127.0.0.1", 5399)  # never contacted
ANSI = re.compile(r"\x1b\[[0-9;]*m")
LEAKED = "oss-cn-hangzhou.aliyuncs.com"

ECI = Addresses(
    ("10.0.0.5", "10.0.1.5"),
    ("fd00::5",),
    "privatelink",
    (
        {"ip": "10.0.0.5", "zone": "cn-hangzhou-h", "endpoint": "ep-1", "eni": "eni-a", "status": "Connected"},
        {"ip": "fd00::5", "zone": "cn-hangzhou-h", "endpoint": "ep-1", "eni": "eni-a", "status": "Connected"},
        {"ip": "10.0.1.5", "zone": "cn-hangzhou-i", "endpoint": "ep-1", "eni": "eni-b", "status": "Connecting"},
    ),
)  # fmt: skip


def make_app(**overrides: Any) -> App:
    data = base_config("127.0.0.1", 5353, [str(UPSTREAM)])
    data["services"] = {
        "eci": {"domains": ["eci-vpc.{region}.aliyuncs.com", "eci.{region}.aliyuncs.com"]},
        "ecs": {"domains": ["ecs.{region}.aliyuncs.com"]},
        "sts": {"domains": ["sts-vpc.{region}.aliyuncs.com"], "static": ["10.9.9.9"]},
    }
    data.update(overrides)
    app = App(parse_config(data), upstreams=(UPSTREAM,))
    static = {"sts": Addresses(("10.9.9.9",), (), "static")}
    app.swap_table(table_for(app.config, {"eci": ECI, **static}, loaded=True))
    return app


def leak(app: App, name: str = LEAKED, address: str = "100.100.1.2") -> None:
    query = dns.message.make_query(name, "A")
    reply = dns.message.make_response(query)
    reply.answer.append(dns.rrset.from_text(name + ".", 60, "IN", "A", address))
    qname = encode_name(name.lower())
    assert app.leaks is not None
    assert app.leaks.inspect(qname, reply.to_wire(), 12 + len(qname) + 4) == [address]


@pytest.fixture
def doc() -> dict[str, Any]:
    """A status with zones, a static service, one without addresses, a sync error, a leak."""
    app = make_app()
    now = time.time()
    st = app.sync_state
    st.source, st.origin = "privatelink", "privatelink"
    st.last_success, st.data_time = now - 12, now - 12
    st.last_error, st.last_error_at = "throttled: Throttling.User (request id r-1)", now - 200
    st.partial = {"ep-2": "zones failed: timeout"}
    app.forwarder.upstreams[0].stats.requests = 42
    app.forwarder.upstreams[0].stats.failures["timeout"] += 3
    leak(app)
    return build_status(app, now=now)


# -- build_status ----------------------------------------------------------------------------


def test_status_document_is_plain_json(doc: dict[str, Any]) -> None:
    assert json.loads(json.dumps(doc)) == doc
    assert doc["version"] and doc["uptime"] >= 0
    assert doc["ready"] is False and doc["reason"] == "listeners not bound"
    assert doc["lame_duck"] is False
    assert doc["listeners"] == ["127.0.0.1:5353"]
    assert set(doc["config"]) == {"path", "version", "loaded_at", "region"}


def test_services_group_addresses_by_zone(doc: dict[str, Any]) -> None:
    services = {s["name"]: s for s in doc["services"]}
    assert list(services) == ["eci", "ecs", "sts"], "configured order, empty ones included"
    eci = services["eci"]
    assert eci["domains"] == ["eci-vpc.cn-hangzhou.aliyuncs.com", "eci.cn-hangzhou.aliyuncs.com"]
    assert eci["origin"] == "privatelink"
    assert list(eci["zones"]) == ["cn-hangzhou-h", "cn-hangzhou-i"]
    assert [e["ip"] for e in eci["zones"]["cn-hangzhou-h"]] == ["10.0.0.5", "fd00::5"]
    assert eci["zones"]["cn-hangzhou-i"] == [
        {"ip": "10.0.1.5", "endpoint": "ep-1", "eni": "eni-b", "status": "Connecting"}
    ]
    assert eci["counts"] == {"ipv4": 2, "ipv6": 1, "zones": 2}
    assert services["ecs"]["zones"] == {} and services["ecs"]["origin"] == "none"
    assert services["ecs"]["counts"] == {"ipv4": 0, "ipv6": 0, "zones": 0}
    assert [e["ip"] for e in services["sts"]["zones"]["static"]] == ["10.9.9.9"]


def test_sync_upstreams_and_leaks(doc: dict[str, Any]) -> None:
    sync = doc["sync"]
    assert sync["source"] == "privatelink" and sync["origin"] == "privatelink"
    assert sync["last_error"].startswith("throttled:")
    assert sync["age"] == pytest.approx(12, abs=1)
    assert sync["partial"] == {"ep-2": "zones failed: timeout"}
    assert sync["consecutive_failures"] == 0
    (up,) = doc["upstreams"]
    assert up == {
        "name": "127.0.0.1:5399",
        "healthy": True,
        "tcp_healthy": True,
        "last_probe": None,
        "last_probe_ok": None,
        "requests": 42,
        "failures": {"timeout": 3},
        "last_error": "",
    }
    (leaked,) = doc["leaks"]
    assert leaked["name"].rstrip(".") == LEAKED
    assert leaked["addresses"] == ["100.100.1.2"] and leaked["count"] == 1


def test_leak_detection_off() -> None:
    doc = build_status(make_app(leaks={"enabled": False}))
    assert doc["leak_detection"] is False and doc["leaks"] == []
    assert "leak detection is off" in render_status(doc, color=False)


# -- render_status ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (12.7, "12s"), (59, "59s"), (60, "1m00s"), (303, "5m03s"), (3600, "1h00m"),
     (11_520, "3h12m"), (86_400, "1d00h"), (187_200, "2d04h"), (-5, "0s")],
)  # fmt: skip
def test_duration(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_plain_render_reads_at_a_glance(doc: dict[str, Any]) -> None:
    text = render_status(doc, color=False)
    assert "\x1b" not in text
    lines = text.splitlines()
    assert lines[0].startswith("NOT READY: listeners not bound")
    row = next(line for line in lines if "10.0.1.5" in line)
    assert row.split() == ["cn-hangzhou-i", "10.0.1.5", "ep-1", "Connecting"]
    row = next(line for line in lines if "fd00::5" in line)
    assert row.split() == [
        "eci.cn-hangzhou.aliyuncs.com",
        "cn-hangzhou-h",
        "fd00::5",
        "ep-1",
        "Connected",
    ]
    first = next(line for line in lines if line.startswith("eci "))
    assert first.split()[:3] == ["eci", "eci-vpc.cn-hangzhou.aliyuncs.com", "cn-hangzhou-h"]
    assert re.search(r"^ecs\s+ecs\.cn-hangzhou\.aliyuncs\.com\s+-\s+no addresses$", text, re.M)
    assert re.search(r"^sts\s+\S+\s+static\s+10\.9\.9\.9", text, re.M)
    assert "privatelink: last success 12s ago" in text
    assert re.search(r"last error 3m2\ds ago: throttled: Throttling.User", text)
    assert "partial: ep-2: zones failed: timeout" in text
    assert re.search(
        r"UPSTREAM\s+127\.0\.0\.1:5399\s+healthy\s+42 queries, failures: timeout 3", text
    )
    assert re.search(r"^LEAKS .*conflict range", text, re.M)
    assert re.search(rf"^  {re.escape(LEAKED)}\s+-> 100\.100\.1\.2\s+\(seen 1x", text, re.M)  # fmt: skip


def test_columns_line_up(doc: dict[str, Any]) -> None:
    lines = render_status(doc, color=False).splitlines()
    header = next(line for line in lines if line.startswith("SERVICE"))
    start = lines.index(header) + 1
    rows = [line for line in lines[start : lines.index("", start)] if "." in line or ":" in line]
    assert len(rows) == 5  # eci: 3 addresses, ecs: none, sts: 1
    for column in ("ZONE", "IP", "ENDPOINT"):
        at = header.index(column)
        cells = [row[at - 2 : at + 1] for row in rows if "no addresses" not in row]
        assert all(c[:2] == "  " and c[2] != " " for c in cells), column


def test_color_render_is_the_plain_one_painted(doc: dict[str, Any]) -> None:
    plain = render_status(doc, color=False)
    painted = render_status(doc, color=True)
    assert ANSI.sub("", painted) == plain
    assert "\x1b[31;1mNOT READY: listeners not bound\x1b[0m" in painted
    assert f"\x1b[31m  {LEAKED}" not in painted  # the indent stays unpainted
    assert re.search(rf"\x1b\[31m{re.escape(LEAKED)}\s+-> 100\.100\.1\.2\x1b\[0m", painted)
    assert "\x1b[33mlast error" in painted, "a past error is yellow"
    assert "\x1b[33mConnecting" in painted


def test_color_ready_green_and_a_current_error_red(doc: dict[str, Any]) -> None:
    doc = dict(doc, ready=True, reason="ready", leaks=[])
    doc["sync"] = dict(doc["sync"], consecutive_failures=4)
    painted = render_status(doc, color=True)
    assert painted.startswith("\x1b[32;1mREADY\x1b[0m")
    assert "\x1b[31mlast error" in painted, "an error still happening is red"
    assert "\x1b[31m4 failed rounds in a row" in painted
    assert "\x1b[32mno leaks seen" in painted
    assert "NOT READY" not in painted


# -- status_command against canned servers -------------------------------------------------

Canned = dict[str, tuple[int, bytes]]


class _Handler(BaseHTTPRequestHandler):
    routes: Canned = {}

    def do_GET(self) -> None:
        status, body = self.routes.get(self.path, (404, b"not found\n"))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def serve() -> Iterator[Callable[[Canned], str]]:
    """Factory: a stdlib HTTP server on 127.0.0.1:0 answering `routes`; returns its URL."""
    servers: list[ThreadingHTTPServer] = []

    def start(routes: Canned) -> str:
        handler = type("Handler", (_Handler,), {"routes": routes})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        servers.append(server)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(url: str, as_json: bool = False, out: io.StringIO | None = None) -> tuple[int, str, str]:
    out = out if out is not None else io.StringIO()
    err = io.StringIO()
    code = status_command(url, as_json, out, err)
    return code, out.getvalue(), err.getvalue()


def test_ready_exits_0_and_json_is_the_document(serve, doc) -> None:
    url = serve({"/status": (200, json.dumps(doc).encode()), "/readyz": (200, b"ready\n")})
    code, out, err = run(url, as_json=True)
    assert (code, err) == (0, "")
    assert json.loads(out) == doc
    code, out, _ = run(url + "/")
    assert code == 0 and out.startswith("READY") and "\x1b" not in out


def test_not_ready_exits_1_with_the_readyz_reason(serve, doc) -> None:
    body = json.dumps(dict(doc, ready=True)).encode()
    url = serve({"/status": (200, body), "/readyz": (503, b"shutting down\n")})
    code, out, err = run(url)
    assert (code, err) == (1, "")
    assert out.startswith("NOT READY: shutting down")


def test_without_readyz_the_document_decides(serve, doc) -> None:
    url = serve({"/status": (200, json.dumps(doc).encode())})
    assert run(url)[0] == 1
    url = serve({"/status": (200, json.dumps(dict(doc, ready=True)).encode())})
    assert run(url)[0] == 0


@pytest.mark.parametrize(
    "routes",
    [{"/status": (500, b"boom")}, {"/status": (200, b"<html>")}, {"/status": (200, b"[1]")}],
    ids=["http-500", "not-json", "not-object"],
)
def test_a_broken_endpoint_exits_2(serve, routes) -> None:
    code, out, err = run(serve(routes))
    assert (code, out) == (2, "")
    assert err.startswith("pldns status: cannot read ") and err.count("\n") == 1


def test_a_foreign_document_exits_2(serve) -> None:
    body = json.dumps({"ready": True, "services": [{"domains": []}]}).encode()
    code, out, err = run(serve({"/status": (200, body), "/readyz": (200, b"ready\n")}))
    assert (code, out) == (2, "")
    assert err.startswith("pldns status: unexpected /status document") and err.count("\n") == 1


def test_unreachable_exits_2_with_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, out, err = run(url)
    assert (code, out) == (2, "")
    assert err.startswith(f"pldns status: cannot read {url}/status: ")
    assert err.count("\n") == 1 and "refused" in err.lower()
    assert err.rstrip().endswith("(--config FILE takes the address from http.listen)")


def test_proxy_settings_are_ignored(serve, doc, monkeypatch) -> None:
    url = serve({"/status": (200, json.dumps(doc).encode()), "/readyz": (200, b"ready\n")})
    dead = f"http://127.0.0.1:{free_port()}"
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(var, dead)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert run(url)[0] == 0


def test_color_only_on_a_tty_without_no_color(serve, doc, monkeypatch) -> None:
    url = serve({"/status": (200, json.dumps(doc).encode()), "/readyz": (503, b"starting\n")})
    monkeypatch.delenv("NO_COLOR", raising=False)
    _, out, _ = run(url, out=Tty())
    assert out.startswith("\x1b[31;1mNOT READY: starting")
    monkeypatch.setenv("NO_COLOR", "1")
    _, out, _ = run(url, out=Tty())
    assert "\x1b" not in out
    monkeypatch.delenv("NO_COLOR")
    _, out, _ = run(url, as_json=True, out=Tty())
    assert "\x1b" not in out


# -- against a running App -------------------------------------------------------------------


def test_status_of_a_running_app_over_its_http_endpoint() -> None:
    from pldns.supervisor import Supervisor

    port = free_port()
    app = App(parse_config(base_config("127.0.0.1", port, [str(UPSTREAM)])), upstreams=(UPSTREAM,))

    async def main() -> tuple[tuple[int, str, str], tuple[int, str, str]]:
        await app.start()
        api = HttpApi(Supervisor(app).routes())
        await api.start("127.0.0.1", 0)
        url = f"http://127.0.0.1:{api.port}"
        try:
            ready = await asyncio.to_thread(run, url)
            app.lame_duck = True
            lame = await asyncio.to_thread(run, url, True)
        finally:
            await api.close()
            await app.stop(drain=1.0)
        return ready, lame

    (code, out, err), (lame_code, lame_out, _) = asyncio.run(main())
    assert (code, err) == (0, "")
    assert out.startswith("READY") and f"listening on 127.0.0.1:{port}" in out
    assert re.search(r"^eci\s+eci-vpc\.cn-hangzhou\.aliyuncs\.com\s+static\s+", out, re.M)
    assert lame_code == 1
    assert json.loads(lame_out)["lame_duck"] is True

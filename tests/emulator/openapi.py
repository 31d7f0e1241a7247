"""A local emulator of the Alibaba Cloud OpenAPI wire protocol for PrivateLink (2020-04-15)
and PrivateZone (2018-01-01), which the *real* Python SDK talks to over loopback HTTP.

    with OpenApiEmulator() as emu:
        emu.add_endpoint("ep-1", "com.aliyuncs.privatelink.cn-hangzhou.eci",
                         zones=[{"zone_id": "cn-hangzhou-h", "eni_ip": "10.0.0.5"}])
        cfg = Config(access_key_id=TEST_ACCESS_KEY_ID, access_key_secret=TEST_ACCESS_KEY_SECRET,
                     endpoint=emu.endpoint, protocol="http", region_id="cn-hangzhou")

Signatures are recomputed (ACS3-HMAC-SHA256 and RPC HMAC-SHA1, see ``signature.py``).
Errors use the real JSON body ``{RequestId, HostId, Code, Message, Recommend}``. Codes and
statuses come from Alibaba Cloud's published gateway ("client common") error table:
InvalidAccessKeyId.NotFound 404, SignatureDoesNotMatch 400, Missing<Param> 400,
InvalidAction.NotFound 404, Throttling / Throttling.User 400, Forbidden.RAM 403,
InternalError 500, ServiceUnavailable 503, SignatureNonceUsed 400; IllegalParam.NextToken 400
(VPC-family APIs); EndpointNotFound 400 (see actions.py); Zone.Invalid.Id 400 (pvtz docs).

Stdlib only. Run standalone: ``python -m tests.emulator.openapi --port 18080 --state s.json``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import signal
import socket
import struct
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlsplit

from .actions import PRIVATELINK_VERSION, PVTZ_VERSION, Actions
from .faults import KNOWN_ERRORS, Fault, FaultPlan
from .signature import RPC_SIGNING_PARAMS, ApiError, Credential, first, verify_request
from .state import CloudState

TEST_ACCESS_KEY_ID = "LTAItestkeyid0000"
TEST_ACCESS_KEY_SECRET = "pldns-test-secret-Zq8v"

log = logging.getLogger("pldns.tests.emulator")


class Call(NamedTuple):
    action: str
    params: dict[str, str]
    status: int | None  # None: the connection was reset without an answer


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True  # SO_REUSEADDR, so restart() can re-bind the same port

    def __init__(self, address: tuple[str, int], emulator: OpenApiEmulator) -> None:
        self.emulator = emulator
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out (or a "reset" fault) leaves a dead socket behind: not a bug.
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            log.debug("emulator: client %s went away", client_address)
            return
        super().handle_error(request, client_address)

    def drop_connections(self) -> None:
        """Close idle keep-alive connections too: the cloud really went away."""
        with self.connections_lock:
            conns = list(self.connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes
    server_version = "Tengine"
    sys_version = ""
    timeout = 60

    def do_POST(self) -> None:
        self.server.emulator._handle(self)  # type: ignore[attr-defined]

    do_GET = do_POST

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("emulator %s - " + format, self.address_string(), *args)


class OpenApiEmulator(CloudState):
    """The emulated cloud. State methods (``add_endpoint``, ``set_zone``, ``add_pvtz_zone``, …)
    come from :class:`CloudState`; all are safe to call while the server runs."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, region: str = "cn-hangzhou") -> None:
        super().__init__(region)
        self.host = host
        self.port = port
        self.actions = Actions(self)
        self.credentials: dict[str, Credential] = {
            TEST_ACCESS_KEY_ID: Credential(TEST_ACCESS_KEY_SECRET)
        }
        self.verify_signatures = True
        self.calls: list[Call] = []
        self.call_times: list[float] = []  # time.monotonic() when each call was answered
        self.faults = FaultPlan()
        self._nonces: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ---------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        """``host:port`` for ``Config(endpoint=..., protocol="http")``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def start(self) -> OpenApiEmulator:
        """Bind (the previous port if there was one) and serve in a daemon thread."""
        if self._server is not None:
            return self
        self._server = _Server((self.host, self.port), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="openapi-emulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and drop open connections; new connections are refused."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.drop_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def restart(self, downtime: float = 0.0) -> OpenApiEmulator:
        """Stop, wait ``downtime`` seconds, and serve again on the same port."""
        self.stop()
        if downtime:
            time.sleep(downtime)
        return self.start()

    def __enter__(self) -> OpenApiEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- test controls -----------------------------------------------------------
    def add_credential(
        self, access_key_id: str, secret: str, security_token: str | None = None
    ) -> None:
        """Accept another key; with ``security_token`` set, requests must carry that STS token."""
        with self._lock:
            self.credentials[access_key_id] = Credential(secret, security_token)

    def inject(
        self,
        kind: str,
        count: int = 1,
        action: str | None = None,
        retry_after: int | None = None,
        delay: float | None = None,
        code: str | None = None,
        status: int | None = None,
    ) -> None:
        """Make the next ``count`` calls (of ``action``, or any) fail.

        kinds: ``throttle`` (400 Throttling.User), ``5xx`` (503 ServiceUnavailable; with
        ``code="InternalError"`` 500), ``auth`` (403 Forbidden.RAM), ``slow`` (sleep ``delay``
        seconds, then answer normally), ``reset`` (close the connection with a TCP RST, no
        answer). ``retry_after`` is in **milliseconds** and becomes the ``x-acs-retry-after``
        header, which the SDK turns into ``ThrottlingException.retry_after`` unchanged (ms; it
        is used with any error kind). ``code``/``status`` override the defaults.
        """
        self.faults.add(Fault(kind, count, action, retry_after, delay, code, status))

    def clear_faults(self) -> None:
        self.faults.clear()

    def count(self, action: str | None = None) -> int:
        """How many requests (of ``action``, or all) reached the emulator."""
        with self._lock:
            return sum(1 for c in self.calls if action is None or c.action == action)

    def reset_calls(self) -> None:
        with self._lock:
            self.calls.clear()
            self.call_times.clear()

    def wait_for_calls(self, n: int, action: str | None = None, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while self.count(action) < n:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    # ---- request handling ----------------------------------------------------------
    def _check_nonce(self, nonce: str | None) -> None:
        if not nonce:
            raise ApiError(
                400, "MissingSignatureNonce", "SignatureNonce is mandatory for this action."
            )
        with self._lock:
            if nonce in self._nonces:
                raise ApiError(
                    400, "SignatureNonceUsed", "Specified signature nonce was used already."
                )
            self._nonces[nonce] = None
            while len(self._nonces) > 100_000:
                self._nonces.popitem(last=False)

    def _handle(self, h: _Handler) -> None:
        url = urlsplit(h.path)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        form: dict[str, str] = {}
        if (h.headers.get("Content-Type") or "").startswith("application/x-www-form-urlencoded"):
            form = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        headers: dict[str, list[str]] = {}
        for name, value in h.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        action = first(headers, "x-acs-action") or query.get("Action", "")
        version = first(headers, "x-acs-version") or query.get("Version", "")
        params = {k: v for k, v in {**query, **form}.items() if k not in RPC_SIGNING_PARAMS}
        request_id = str(uuid.uuid4()).upper()
        extra_headers: dict[str, str] = {}
        try:
            if self.verify_signatures:
                with self._lock:
                    creds = dict(self.credentials)
                verify_request(h.command, url.path or "/", query, headers, body, form, creds.get)
                self._check_nonce(
                    first(headers, "x-acs-signature-nonce") or query.get("SignatureNonce")
                )
            fault = self.faults.take(action)
            if fault is not None and fault.retry_after is not None:
                extra_headers["x-acs-retry-after"] = str(int(fault.retry_after))
            if fault is not None and fault.kind == "reset":
                self._record(action, params, None)
                self._reset(h)
                return
            if fault is not None and fault.kind == "slow":
                time.sleep(fault.delay or 0.0)
            elif fault is not None:
                raise fault.error(action, self._product(version))
            handler = self.actions.table.get((action, version))
            if handler is None:
                if any(a == action for a, _ in self.actions.table):
                    raise ApiError(
                        400, "InvalidVersion", "Specified parameter Version is not valid."
                    )
                raise ApiError(
                    404,
                    "InvalidAction.NotFound",
                    "Specified api is not found, please check your url and method.",
                )
            try:
                status, payload = 200, {"RequestId": request_id, **handler(params)}
            except ApiError:
                raise
            except Exception as exc:  # an emulator bug must still answer, like a real 500
                log.exception("emulator: %s failed", action)
                raise ApiError(500, "InternalError", *KNOWN_ERRORS["InternalError"][1:]) from exc
        except ApiError as err:
            status = err.status
            payload = {
                "RequestId": request_id,
                "HostId": self._host_id(version, h.headers.get("Host")),
                "Code": err.code,
                "Message": err.message,
                "Recommend": f"https://api.aliyun.com/troubleshoot?q={err.code}&product="
                f"{self._product(version)}&requestId={request_id}",
                **err.extra,
            }
        self._record(action, params, status)
        data = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json;charset=utf-8")
        h.send_header("Content-Length", str(len(data)))
        h.send_header("x-acs-request-id", request_id)
        for name, value in extra_headers.items():
            h.send_header(name, value)
        h.end_headers()
        h.wfile.write(data)
        log.debug("emulator %s %s -> %s", action, params, status)

    def _record(self, action: str, params: dict[str, str], status: int | None) -> None:
        with self._lock:
            self.calls.append(Call(action, params, status))
            self.call_times.append(time.monotonic())

    @staticmethod
    def _reset(h: _Handler) -> None:
        h.close_connection = True
        try:
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.connection.close()  # the RST goes out once rfile/wfile are closed by finish()
        except OSError:
            pass

    def _product(self, version: str) -> str:
        return {PRIVATELINK_VERSION: "Privatelink", PVTZ_VERSION: "pvtz"}.get(version, "")

    def _host_id(self, version: str, host: str | None) -> str:
        if version == PRIVATELINK_VERSION:
            return f"privatelink.{self.region}.aliyuncs.com"
        if version == PVTZ_VERSION:
            return "pvtz.aliyuncs.com"
        return host or ""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description="Local Alibaba Cloud OpenAPI emulator (PrivateLink, pvtz)"
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=18080)
    ap.add_argument("--region", default="cn-hangzhou")
    ap.add_argument(
        "--state", help="JSON: a list of endpoints, or {endpoints, pvtz_zones}; SIGHUP reloads"
    )
    ap.add_argument("--no-verify", action="store_true", help="accept any signature (curl demos)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(message)s")
    emu = OpenApiEmulator(args.host, args.port, args.region)
    emu.verify_signatures = not args.no_verify

    def load(*_: object) -> None:
        if args.state:
            with open(args.state, encoding="utf-8") as f:
                emu.load_state(json.load(f))
            log.info("state loaded from %s: %d endpoints", args.state, len(emu.endpoints()))

    load()
    stop = threading.Event()
    signal.signal(signal.SIGHUP, load)
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    emu.start()
    # The secret is deliberately not logged (tests grep logs for it): see TEST_ACCESS_KEY_SECRET.
    log.info(
        "OpenAPI emulator on http://%s (region %s); AccessKey id %s (secret: TEST_ACCESS_KEY_SECRET"
        " in tests/emulator/openapi.py)",
        emu.endpoint,
        emu.region,
        TEST_ACCESS_KEY_ID,
    )
    stop.wait()
    emu.stop()


if __name__ == "__main__":
    main()

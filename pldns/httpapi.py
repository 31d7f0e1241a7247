"""The HTTP endpoint: /metrics, /healthz, /readyz, /status, POST /cache/flush. A small HTTP/1.1
server on asyncio.

GET for reading, POST for the few actions (a request body is ignored), one request per connection, bounded request size and read time: it serves probes
and scrapes, not browsers. Routes are callables returning (status, content type, body).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger("pldns.http")

Route = Callable[[], tuple[int, str, bytes]]
MAX_REQUEST = 8192
READ_TIMEOUT = 5.0
REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


def ops_routes(
    ready: Callable[[], tuple[bool, str]],
    metrics: Callable[[], tuple[bytes, str]],
    status: Callable[[], Mapping[str, Any]],
) -> dict[str, Route]:
    """The one route table of `pldns serve` and `pldns sync`: /healthz, /readyz, /metrics,
    /status. Each process passes its own readiness, exposition and status document.

    /healthz is answered by the event loop itself, so it means "the loop is alive"; /readyz is
    200 or 503 with the reason as the body (a probe's log shows why).
    """

    def healthz() -> tuple[int, str, bytes]:
        return 200, "text/plain", b"ok\n"

    def readyz() -> tuple[int, str, bytes]:
        ok, reason = ready()
        return (200 if ok else 503), "text/plain", (reason + "\n").encode()

    def scrape() -> tuple[int, str, bytes]:
        body, ctype = metrics()
        return 200, ctype, body

    def describe() -> tuple[int, str, bytes]:
        body = json.dumps(status(), indent=2, default=str).encode() + b"\n"
        return 200, "application/json", body

    return {"/healthz": healthz, "/readyz": readyz, "/metrics": scrape, "/status": describe}


class HttpApi:
    def __init__(
        self, routes: Mapping[str, Route], actions: Mapping[str, Route] | None = None
    ) -> None:
        self.routes = dict(routes)
        self.actions = dict(actions or {})  # POST only
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(self._serve, host, port, limit=MAX_REQUEST)

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = request_line.split()
            if len(parts) != 3:
                return
            method, target = parts[0], parts[1].split("?", 1)[0]
            route = self.routes.get(target)
            action = self.actions.get(target)
            if route is None and action is None:
                status, ctype, body = 404, "text/plain", b"not found\n"
            elif action is not None:
                if method == "POST":
                    status, ctype, body = action()
                else:
                    status, ctype, body = 405, "text/plain", b"POST only\n"
            elif method not in ("GET", "HEAD"):
                status, ctype, body = 405, "text/plain", b"GET only\n"
            else:
                assert route is not None
                status, ctype, body = route()
            header = (
                f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
                f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
            ).encode()
            writer.write(header if method == "HEAD" else header + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except ConnectionError:
            pass
        except Exception:
            log.exception("HTTP request failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2.0)
            self.server = None

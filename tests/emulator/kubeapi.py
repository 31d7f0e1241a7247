"""A local emulator of the few Kubernetes API calls pldns makes, over plain HTTP on loopback.

    with KubeApiEmulator(tokens={"tok-a": "a"}) as api:
        config = KubeConfig(api=api.url, token="tok-a")
        ...
        api.configmap("pldns-system", "pldns-snapshot")   # the stored object, or None

Served: ConfigMaps (core v1) get / create (POST) / update (PUT) and coordination.k8s.io/v1
Leases get / create / update, in any namespace. As the API server does it: a missing or
unknown bearer token is 401; an update whose metadata.resourceVersion differs from the
stored one is 409 Conflict, a create of an existing name 409 AlreadyExists, a missing object
404 NotFound, each with a v1 Status body; name/namespace/kind mismatches are 400; a bad
Lease field or an oversized ConfigMap is 422 Invalid. resourceVersion is a global counter.

Fault injection: `fail(status, method=..., resource=..., times=1)` answers the next matching
requests with that status (a Status body) instead of serving them; `before(method, resource,
fn)` runs fn(store) once right before the next matching request is served (to write behind
a client's back); `deny(token)` makes a token's calls fail with 500 until `allow(token)`.
`calls` records (method, path, status, who) for every request. Stdlib only.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple

MICRO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d)$")
MAX_OBJECT = 1024 * 1024
_ROUTES = (
    (re.compile(r"^/api/v1/namespaces/([^/]+)/configmaps(?:/([^/]+))?$"), "configmaps"),
    (
        re.compile(r"^/apis/coordination\.k8s\.io/v1/namespaces/([^/]+)/leases(?:/([^/]+))?$"),
        "leases",
    ),
)
_KINDS = {"configmaps": ("v1", "ConfigMap"), "leases": ("coordination.k8s.io/v1", "Lease")}
_LEASE_FIELDS: dict[str, type | str] = {
    "holderIdentity": str,
    "leaseDurationSeconds": int,
    "leaseTransitions": int,
    "acquireTime": "time",
    "renewTime": "time",
    "preferredHolder": str,
    "strategy": str,
}


class Call(NamedTuple):
    method: str
    path: str
    status: int
    who: str  # the identity the token maps to, "" without a valid token


@dataclass
class _Fault:
    status: int
    method: str | None
    resource: str | None
    times: int


class ApiStatus(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def body(self) -> dict[str, Any]:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }


class KubeApiEmulator:
    def __init__(self, tokens: dict[str, str] | None = None) -> None:
        self.tokens = dict(tokens or {"test-token": "test"})
        self.store: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.calls: list[Call] = []
        self.lock = threading.RLock()
        self._rv = 100
        self._faults: list[_Fault] = []
        self._hooks: list[tuple[str, str, Callable[[KubeApiEmulator], None]]] = []
        self._denied: set[str] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- life -----------------------------------------------------------------------------

    def start(self) -> KubeApiEmulator:
        emulator = self

        class Handler(_Handler):
            api = emulator

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.05,), name="kubeapi", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> KubeApiEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        port = self._server.server_address[1]
        return f"http://127.0.0.1:{port}"

    # -- test controls --------------------------------------------------------------------

    def fail(
        self, status: int, method: str | None = None, resource: str | None = None, times: int = 1
    ) -> None:
        with self.lock:
            self._faults.append(_Fault(status, method, resource, times))

    def before(self, method: str, resource: str, fn: Callable[[KubeApiEmulator], None]) -> None:
        with self.lock:
            self._hooks.append((method, resource, fn))

    def deny(self, token: str) -> None:
        with self.lock:
            self._denied.add(token)

    def allow(self, token: str) -> None:
        with self.lock:
            self._denied.discard(token)

    def get(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            obj = self.store.get((resource, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get("configmaps", namespace, name)

    def lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get("leases", namespace, name)

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Store an object directly (as `kubectl apply` would), with a new resourceVersion."""
        resource = next(r for r, (_, kind) in _KINDS.items() if kind == obj["kind"])
        with self.lock:
            meta = obj.setdefault("metadata", {})
            key = (resource, meta["namespace"], meta["name"])
            old = self.store.get(key)
            meta.setdefault("uid", old["metadata"]["uid"] if old else str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())
            meta["resourceVersion"] = self._next_rv()
            self.store[key] = copy.deepcopy(obj)
            return copy.deepcopy(obj)

    def count(self, method: str, resource: str, status: int | None = None) -> int:
        return sum(
            1
            for c in self.calls
            if c.method == method and f"/{resource}" in c.path and status in (None, c.status)
        )

    # -- serving --------------------------------------------------------------------------

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def serve(
        self, method: str, path: str, token: str | None, body: bytes
    ) -> tuple[int, dict[str, Any]]:
        who = self.tokens.get(token or "", "")
        try:
            if not who:
                raise ApiStatus(401, "Unauthorized", "Unauthorized")
            code, doc = self._serve(method, path, token or "", body)
        except ApiStatus as err:
            code, doc = err.code, err.body()
        with self.lock:
            self.calls.append(Call(method, path, code, who))
        return code, doc

    def _serve(self, method: str, path: str, token: str, body: bytes) -> tuple[int, dict[str, Any]]:
        for pattern, kind in _ROUTES:
            match = pattern.match(path.split("?", 1)[0])
            if match:
                resource = kind
                break
        else:
            raise ApiStatus(404, "NotFound", "the server could not find the requested resource")
        namespace, name = match.group(1), match.group(2)
        with self.lock:
            if token in self._denied:
                raise ApiStatus(500, "InternalError", "injected: this client is cut off")
            for fault in self._faults:
                if fault.method in (None, method) and fault.resource in (None, resource):
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                    reason = {409: "Conflict", 500: "InternalError"}.get(fault.status, "Injected")
                    raise ApiStatus(fault.status, reason, f"injected {fault.status}")
            for hook in self._hooks:
                if hook[0] == method and hook[1] == resource:
                    self._hooks.remove(hook)
                    hook[2](self)
                    break
            if method == "GET" and name:
                return 200, self._read(resource, namespace, name)
            if method == "POST" and not name:
                return 201, self._create(resource, namespace, _json(body))
            if method == "PUT" and name:
                return 200, self._update(resource, namespace, name, _json(body))
        raise ApiStatus(405, "MethodNotAllowed", f"{method} is not supported on {path}")

    def _read(self, resource: str, namespace: str, name: str) -> dict[str, Any]:
        obj = self.store.get((resource, namespace, name))
        if obj is None:
            raise ApiStatus(404, "NotFound", f'{resource} "{name}" not found')
        return copy.deepcopy(obj)

    def _check(self, resource: str, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
        api_version, kind = _KINDS[resource]
        if obj.get("apiVersion") != api_version or obj.get("kind") != kind:
            raise ApiStatus(400, "BadRequest", f"expected {api_version} {kind}")
        meta = obj.get("metadata")
        if not isinstance(meta, dict) or not meta.get("name"):
            raise ApiStatus(422, "Invalid", "metadata.name: Required value")
        if meta.get("namespace", namespace) != namespace:
            raise ApiStatus(400, "BadRequest", "the namespace of the object does not match")
        meta["namespace"] = namespace
        if resource == "configmaps":
            data = obj.get("data") or {}
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
                raise ApiStatus(422, "Invalid", "data: values must be strings")
            if len(json.dumps(obj)) > MAX_OBJECT:
                raise ApiStatus(422, "Invalid", "ConfigMap is too long: must be <= 1048576 bytes")
        else:
            spec = obj.get("spec") or {}
            for key, value in spec.items():
                want = _LEASE_FIELDS.get(key)
                if want is None:
                    raise ApiStatus(400, "BadRequest", f'unknown field "spec.{key}"')
                if want == "time":
                    if not (isinstance(value, str) and MICRO_TIME.match(value)):
                        raise ApiStatus(422, "Invalid", f"spec.{key}: not a MicroTime: {value!r}")
                elif isinstance(want, type) and (
                    not isinstance(value, want) or isinstance(value, bool)
                ):
                    raise ApiStatus(422, "Invalid", f"spec.{key}: expected {want.__name__}")
        return obj

    def _create(self, resource: str, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
        obj = self._check(resource, namespace, obj)
        meta = obj["metadata"]
        key = (resource, namespace, meta["name"])
        if key in self.store:
            raise ApiStatus(409, "AlreadyExists", f'{resource} "{meta["name"]}" already exists')
        if meta.get("resourceVersion"):
            raise ApiStatus(400, "BadRequest", "resourceVersion should not be set on create")
        meta.update(
            uid=str(uuid.uuid4()), creationTimestamp=_now(), resourceVersion=self._next_rv()
        )
        self.store[key] = copy.deepcopy(obj)
        return obj

    def _update(
        self, resource: str, namespace: str, name: str, obj: dict[str, Any]
    ) -> dict[str, Any]:
        obj = self._check(resource, namespace, obj)
        meta = obj["metadata"]
        if meta["name"] != name:
            raise ApiStatus(400, "BadRequest", "the name of the object does not match the URL")
        old = self.store.get((resource, namespace, name))
        if old is None:
            raise ApiStatus(404, "NotFound", f'{resource} "{name}" not found')
        sent = meta.get("resourceVersion")
        if sent and sent != old["metadata"]["resourceVersion"]:
            raise ApiStatus(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {resource} "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
            )
        meta.update(
            uid=old["metadata"]["uid"],
            creationTimestamp=old["metadata"]["creationTimestamp"],
            resourceVersion=self._next_rv(),
        )
        self.store[(resource, namespace, name)] = copy.deepcopy(obj)
        return obj


def _json(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except ValueError as err:
        raise ApiStatus(400, "BadRequest", f"invalid JSON: {err}") from err
    if not isinstance(doc, dict):
        raise ApiStatus(400, "BadRequest", "expected a JSON object")
    return doc


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Handler(BaseHTTPRequestHandler):
    api: KubeApiEmulator
    protocol_version = "HTTP/1.1"

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        auth = self.headers.get("Authorization") or ""
        token = auth[7:] if auth.startswith("Bearer ") else None
        code, doc = self.api.serve(self.command, self.path, token, body)
        raw = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

"""Kubernetes publishing for `pldns sync`: the API client and the ConfigMap snapshot sink.

No client library: a handful of JSON calls over HTTPS, through aiohttp when it is installed
(it comes with the Alibaba Cloud SDK the syncer needs anyway), else urllib in a thread. In a
pod the service account is used: the API address from KUBERNETES_SERVICE_HOST/PORT, the CA
and namespace files, and the token file, re-read on every call because bound tokens rotate.
Each part can be overridden (tests point it at a local emulator over plain HTTP). The token
is never logged, put in an error message or shown by a repr. Proxy variables are ignored:
an HTTPS_PROXY meant for the cloud API must not carry calls to the cluster's API server.

Optimistic concurrency throughout: every update carries the resourceVersion it read, a 409
Conflict means someone wrote in between, and the caller re-reads. Leader election on a Lease
is in pldns.sync.lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import re
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pldns import __version__
from pldns.dns.backoff import capped_backoff

log = logging.getLogger("pldns.kube")

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
MANAGED_BY = ("app.kubernetes.io/managed-by", "pldns")
DEFAULT_KEY = "snapshot.json"
DEFAULT_TIMEOUT = 10.0
DEFAULT_CONFLICT_RETRIES = 5
MAX_CONFIGMAP_DATA = 1024 * 1024 - 4096  # etcd's object limit is 1 MiB; leave room for metadata
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class KubeError(Exception):
    """A failed API call: `status` is the HTTP status (0 when no answer came)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        code = f"HTTP {self.status} " if self.status else ""
        return f"{code}{self.reason}: {self.message}"


class KubeConfigError(ValueError):
    """The Kubernetes access settings are missing or wrong (not in a pod, bad reference)."""


@dataclass(frozen=True)
class KubeConfig:
    api: str  # https://10.96.0.1:443, or http://127.0.0.1:PORT for an emulator
    token_file: str = ""  # read on every request; bound service account tokens rotate
    token: str = field(default="", repr=False)  # a fixed token (tests); never logged
    ca_file: str = ""  # "" = the system trust store
    insecure: bool = False  # skip TLS verification (tests only)
    timeout: float = DEFAULT_TIMEOUT
    namespace: str = ""  # this pod's namespace, for references without NAMESPACE/

    def bearer(self) -> str:
        if self.token_file:
            try:
                with open(self.token_file, encoding="utf-8") as handle:
                    return handle.read().strip()
            except OSError as err:
                raise KubeError(
                    0, "NoToken", f"cannot read the token file: {err.strerror}"
                ) from err
        return self.token


def kube_config(
    api: str | None = None,
    token_file: str | None = None,
    env: Mapping[str, str] = os.environ,
    sa_dir: str = SA_DIR,
) -> KubeConfig:
    """In-cluster settings, each overridable: `api` and `token_file` win over the pod's."""
    host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "")
    if not api:
        if not host:
            raise KubeConfigError(
                "not running in a Kubernetes pod (KUBERNETES_SERVICE_HOST is not set); "
                "give --kube-api URL"
            )
        api = f"https://[{host}]:{port or 443}" if ":" in host else f"https://{host}:{port or 443}"
    if not api.startswith(("http://", "https://")):
        raise KubeConfigError(f"--kube-api: expected an http:// or https:// URL, got {api!r}")
    sa_token = os.path.join(sa_dir, "token")
    if token_file is None:
        token_file = sa_token if os.path.exists(sa_token) else ""
    ca = os.path.join(sa_dir, "ca.crt")
    namespace = ""
    with contextlib.suppress(OSError), open(os.path.join(sa_dir, "namespace")) as handle:
        namespace = handle.read().strip()
    return KubeConfig(
        api=api.rstrip("/"),
        token_file=token_file,
        ca_file=ca if api.startswith("https://") and os.path.exists(ca) else "",
        namespace=namespace or env.get("POD_NAMESPACE", ""),
    )


def parse_ref(value: str, default_namespace: str = "", what: str = "reference") -> tuple[str, str]:
    """'NAMESPACE/NAME' (or NAME, in this pod's namespace) -> (namespace, name), checked."""
    namespace, _, name = value.rpartition("/")
    namespace = namespace or default_namespace
    if not namespace:
        raise KubeConfigError(f"{what} {value!r}: expected NAMESPACE/NAME")
    if not _NAMESPACE.match(namespace) or len(namespace) > 63:
        raise KubeConfigError(f"{what} {value!r}: {namespace!r} is not a valid namespace")
    if not _NAME.match(name) or len(name) > 253:
        raise KubeConfigError(f"{what} {value!r}: {name!r} is not a valid object name")
    return namespace, name


def default_identity(env: Mapping[str, str] = os.environ) -> str:
    """Who campaigns for a Lease: the pod's name (downward API), else the host name."""
    return env.get("POD_NAME") or socket.gethostname()


def micro_time(at: float) -> str:
    """A Kubernetes MicroTime: RFC 3339 in UTC with microseconds."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def configmap_path(namespace: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{namespace}/configmaps" + (f"/{name}" if name else "")


def lease_path(namespace: str, name: str = "") -> str:
    base = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
    return base + (f"/{name}" if name else "")


def _have_aiohttp() -> bool:
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        return False
    return True


class KubeClient:
    """JSON requests to the API server; `request` returns (status, body) for any status."""

    def __init__(self, config: KubeConfig, use_aiohttp: bool | None = None) -> None:
        self.config = config
        self.use_aiohttp = _have_aiohttp() if use_aiohttp is None else use_aiohttp
        self._ssl: ssl.SSLContext | None = None
        if config.api.startswith("https://"):
            self._ssl = ssl.create_default_context(cafile=config.ca_file or None)
            if config.insecure:
                self._ssl.check_hostname = False
                self._ssl.verify_mode = ssl.CERT_NONE
        self._session: Any = None

    async def request(
        self, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Accept": "application/json", "User-Agent": f"pldns/{__version__}"}
        token = self.config.bearer()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        url = self.config.api + path
        try:
            if self.use_aiohttp:
                status, raw = await self._aiohttp(method, url, headers, data)
            else:
                status, raw = await asyncio.to_thread(self._urllib, method, url, headers, data)
        except (OSError, TimeoutError) as err:
            raise KubeError(
                0, "Unreachable", f"{method} {path}: {err or type(err).__name__}"
            ) from None
        except Exception as err:  # aiohttp.ClientError and kin; the message never holds headers
            raise KubeError(
                0, "Unreachable", f"{method} {path}: {type(err).__name__}: {err}"
            ) from None
        try:
            doc = json.loads(raw) if raw else {}
        except ValueError:
            doc = {}
        return status, doc if isinstance(doc, dict) else {}

    async def _aiohttp(
        self, method: str, url: str, headers: dict[str, str], data: bytes | None
    ) -> tuple[int, bytes]:
        import aiohttp

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.config.timeout), trust_env=False
            )
        ssl_arg: Any = self._ssl if self._ssl is not None else True
        async with self._session.request(
            method, url, headers=headers, data=data, ssl=ssl_arg, allow_redirects=False
        ) as response:
            return response.status, await response.read()

    def _urllib(
        self, method: str, url: str, headers: dict[str, str], data: bytes | None
    ) -> tuple[int, bytes]:
        handlers: list[Any] = [urllib.request.ProxyHandler({})]
        if self._ssl is not None:
            handlers.append(urllib.request.HTTPSHandler(context=self._ssl))
        opener = urllib.request.build_opener(*handlers)
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with opener.open(req, timeout=self.config.timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            with err:
                return err.code, err.read()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def api_error(status: int, doc: Mapping[str, Any], action: str) -> KubeError:
    """A KubeError from a Status body, with a hint for the usual permission problems."""
    reason = str(doc.get("reason") or {401: "Unauthorized", 403: "Forbidden"}.get(status, "Error"))
    message = str(doc.get("message") or f"HTTP {status}")
    if status == 401:
        message += " (the token was rejected: expired, or not a token of this cluster)"
    elif status == 403:
        message += f" (RBAC: the service account may not {action}; see deploy/kubernetes)"
    return KubeError(status, reason, f"{action}: {message}")


def for_update(doc: dict[str, Any]) -> dict[str, Any]:
    """An object as read, ready to PUT back: managedFields dropped (the server keeps them)."""
    out = dict(doc)
    meta = dict(out.get("metadata") or {})
    meta.pop("managedFields", None)
    out["metadata"] = meta
    return out


def _with_label(meta: dict[str, Any]) -> dict[str, Any]:
    labels = dict(meta.get("labels") or {})
    labels[MANAGED_BY[0]] = MANAGED_BY[1]
    return {**meta, "labels": labels}


class ConfigMapSink:
    """Publishes snapshots into one key of a ConfigMap (a SnapshotSink).

    GET; 404 -> create it; otherwise PUT with the resourceVersion read. A 409 (someone
    wrote in between, or created it first) re-reads and tries again, a bounded number of
    times. Unchanged data is not written again.
    """

    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        name: str,
        key: str = DEFAULT_KEY,
        retries: int = DEFAULT_CONFLICT_RETRIES,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.configmap = name
        self.key = key
        self.retries = max(1, retries)
        self.name = f"configmap:{namespace}/{name}"

    async def publish(self, data: bytes) -> None:
        text = data.decode("utf-8")
        if len(data) > MAX_CONFIGMAP_DATA:
            raise KubeError(0, "TooLarge", f"{len(data)} bytes do not fit in a ConfigMap")
        path = configmap_path(self.namespace, self.configmap)
        what = f"configmap {self.namespace}/{self.configmap}"
        for attempt in range(1, self.retries + 1):
            status, doc = await self.client.request("GET", path)
            if status == 404:
                status, doc = await self.client.request(
                    "POST", configmap_path(self.namespace), self._new(text)
                )
                if status in (200, 201):
                    log.info("created %s (key %s, %d bytes)", what, self.key, len(data))
                    return
                if status != 409:
                    raise api_error(status, doc, f"create {what}")
            elif status != 200:
                raise api_error(status, doc, f"get {what}")
            else:
                meta = doc.get("metadata") or {}
                current = (doc.get("data") or {}).get(self.key)
                if (
                    current == text
                    and (meta.get("labels") or {}).get(MANAGED_BY[0]) == MANAGED_BY[1]
                ):
                    return
                update = for_update(doc)
                update["metadata"] = _with_label(update["metadata"])
                update["data"] = {**(doc.get("data") or {}), self.key: text}
                status, reply = await self.client.request("PUT", path, update)
                if status == 200:
                    log.info("updated %s (key %s, %d bytes)", what, self.key, len(data))
                    return
                if status != 409:
                    raise api_error(status, reply, f"update {what}")
            log.info("%s changed under us (409 Conflict), re-reading (attempt %d)", what, attempt)
            await asyncio.sleep(capped_backoff(attempt, 0.05, 1.0) * (1 + random.random()))
        raise KubeError(
            409, "Conflict", f"update {what}: still conflicting after {self.retries} tries"
        )

    async def read(self) -> bytes | None:
        """The snapshot in the ConfigMap now; None if there is none. KubeError on failure."""
        path = configmap_path(self.namespace, self.configmap)
        status, doc = await self.client.request("GET", path)
        if status == 404:
            return None
        if status != 200:
            raise api_error(status, doc, f"get configmap {self.namespace}/{self.configmap}")
        text = (doc.get("data") or {}).get(self.key)
        return text.encode("utf-8") if isinstance(text, str) else None

    def _new(self, text: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": self.configmap,
                "namespace": self.namespace,
                "labels": dict([MANAGED_BY]),
            },
            "data": {self.key: text},
        }

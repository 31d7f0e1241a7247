"""Kubernetes publishing for `pldns sync`: a ConfigMap snapshot sink and Lease leader election.

No client library: a handful of JSON calls over HTTPS, through aiohttp when it is installed
(it comes with the Alibaba Cloud SDK the syncer needs anyway), else urllib in a thread. In a
pod the service account is used: the API address from KUBERNETES_SERVICE_HOST/PORT, the CA
and namespace files, and the token file, re-read on every call because bound tokens rotate.
Each part can be overridden (tests point it at a local emulator over plain HTTP). The token
is never logged, put in an error message or shown by a repr. Proxy variables are ignored:
an HTTPS_PROXY meant for the cloud API must not carry calls to the cluster's API server.

Optimistic concurrency throughout: every update carries the resourceVersion it read, a 409
Conflict means someone wrote in between, and the caller re-reads. Leader election follows
client-go's Lease lock: a candidate takes a Lease only when it is free, or when its record
has not changed for leaseDurationSeconds by the candidate's *own* clock (no trust in clock
agreement), and a leader that cannot renew for `renew_deadline` (< the lease duration) stops
its work before anyone else may take over, so two replicas never publish at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
import re
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pldns import __version__

log = logging.getLogger("pldns.kube")

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
MANAGED_BY = ("app.kubernetes.io/managed-by", "pldns")
DEFAULT_KEY = "snapshot.json"
DEFAULT_TIMEOUT = 10.0
DEFAULT_CONFLICT_RETRIES = 5
DEFAULT_LEASE_DURATION = 15.0
DEFAULT_RENEW_EVERY = 5.0
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


def _for_update(doc: dict[str, Any]) -> dict[str, Any]:
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
                update = _for_update(doc)
                update["metadata"] = _with_label(update["metadata"])
                update["data"] = {**(doc.get("data") or {}), self.key: text}
                status, reply = await self.client.request("PUT", path, update)
                if status == 200:
                    log.info("updated %s (key %s, %d bytes)", what, self.key, len(data))
                    return
                if status != 409:
                    raise api_error(status, reply, f"update {what}")
            log.info("%s changed under us (409 Conflict), re-reading (attempt %d)", what, attempt)
            await asyncio.sleep(0.05 * attempt * (1 + random.random()))
        raise KubeError(
            409, "Conflict", f"update {what}: still conflicting after {self.retries} tries"
        )

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


Work = Callable[[asyncio.Event], Awaitable[None]]


class LeaseElector:
    """Leader election on a coordination.k8s.io/v1 Lease.

    `run_as_leader(work, stop)` campaigns until `stop` is set; while this replica leads, it
    runs `work(lost)`, where `lost` is set (and the task then cancelled) the moment the
    leadership ends: a renewal refused, or no successful renewal for `renew_deadline`
    seconds (default two thirds of the lease, as client-go's 10 s of 15 s). On `stop` the
    Lease is released so another replica takes over at once instead of after expiry.
    """

    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: float = DEFAULT_LEASE_DURATION,
        renew_every: float = DEFAULT_RENEW_EVERY,
        renew_deadline: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.lease = name
        self.identity = identity
        self.lease_seconds = max(1, math.ceil(lease_duration))
        self.renew_every = renew_every
        self.renew_deadline = (
            renew_deadline if renew_deadline is not None else self.lease_seconds * 2 / 3
        )
        if not 0 < renew_every < self.renew_deadline < self.lease_seconds:
            raise ValueError("expected 0 < renew_every < renew_deadline < lease_duration")
        self.clock = clock
        self.wall = wall
        self.is_leader = False
        self.terms = 0  # how many times this replica became leader
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._acquired_at = 0.0
        self._last_error = ""

    @property
    def path(self) -> str:
        return lease_path(self.namespace, self.lease)

    def _observe(self, spec: Mapping[str, Any]) -> None:
        record = tuple(
            spec.get(k)
            for k in ("holderIdentity", "renewTime", "acquireTime", "leaseDurationSeconds",
                      "leaseTransitions")
        )  # fmt: skip
        if record != self._observed:
            self._observed = record
            self._observed_at = self.clock()

    def _expired(self, spec: Mapping[str, Any]) -> bool:
        seconds = spec.get("leaseDurationSeconds")
        duration = seconds if isinstance(seconds, int) and seconds > 0 else self.lease_seconds
        return self.clock() >= self._observed_at + duration

    def _spec(self, old: Mapping[str, Any]) -> dict[str, Any]:
        now = micro_time(self.wall())
        mine = old.get("holderIdentity") == self.identity
        transitions = old.get("leaseTransitions") or 0
        spec = dict(old)
        spec.update(
            holderIdentity=self.identity,
            leaseDurationSeconds=self.lease_seconds,
            acquireTime=old.get("acquireTime") if mine and old.get("acquireTime") else now,
            renewTime=now,
            leaseTransitions=transitions if mine else transitions + 1,  # as client-go counts
        )
        return spec

    async def try_acquire_or_renew(self) -> bool:
        """One attempt: True if this replica holds the Lease afterwards. KubeError on failure."""
        what = f"lease {self.namespace}/{self.lease}"
        status, doc = await self.client.request("GET", self.path)
        if status == 404:
            spec = self._spec({})
            spec["leaseTransitions"] = 0
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": self.lease,
                    "namespace": self.namespace,
                    "labels": dict([MANAGED_BY]),
                },
                "spec": spec,
            }
            status, doc = await self.client.request("POST", lease_path(self.namespace), body)
            if status in (200, 201):
                self._observe(doc.get("spec") or spec)
                return True
            if status == 409:
                return False
            raise api_error(status, doc, f"create {what}")
        if status != 200:
            raise api_error(status, doc, f"get {what}")
        spec = doc.get("spec") or {}
        self._observe(spec)
        holder = spec.get("holderIdentity") or ""
        if holder and holder != self.identity and not self._expired(spec):
            return False
        update = _for_update(doc)
        update["spec"] = self._spec(spec)
        status, reply = await self.client.request("PUT", self.path, update)
        if status == 200:
            self._observe(reply.get("spec") or update["spec"])
            return True
        if status == 409:
            return False
        raise api_error(status, reply, f"update {what}")

    async def release(self) -> None:
        """Give the Lease up (holder cleared, 1 s duration) if this replica still holds it."""
        try:
            status, doc = await self.client.request("GET", self.path)
            spec = doc.get("spec") or {}
            if status != 200 or spec.get("holderIdentity") != self.identity:
                return
            update = _for_update(doc)
            new = dict(spec)
            new.pop("holderIdentity", None)
            new.update(leaseDurationSeconds=1, renewTime=micro_time(self.wall()))
            update["spec"] = new
            status, reply = await self.client.request("PUT", self.path, update)
            if status == 200:
                log.info("released lease %s/%s", self.namespace, self.lease)
            else:
                log.warning("could not release lease: %s", api_error(status, reply, "update lease"))
        except KubeError as err:
            log.warning("could not release lease %s/%s: %s", self.namespace, self.lease, err)

    def _note_error(self, err: KubeError) -> None:
        message = str(err)
        if message != self._last_error:
            level = logging.ERROR if err.status in (401, 403) else logging.WARNING
            log.log(level, "lease %s/%s: %s", self.namespace, self.lease, message)
        self._last_error = message

    async def _attempt(self, timeout: float) -> bool | None:
        """try_acquire_or_renew bounded in time; None when it failed (error or time-out)."""
        try:
            result = await asyncio.wait_for(self.try_acquire_or_renew(), max(0.01, timeout))
        except KubeError as err:
            self._note_error(err)
            return None
        except TimeoutError:
            self._note_error(KubeError(0, "Timeout", f"no answer within {timeout:.2f}s"))
            return None
        self._last_error = ""
        return result

    async def _wait(
        self, stop: asyncio.Event, seconds: float, *others: asyncio.Future[Any]
    ) -> None:
        waiter = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait(
                {waiter, *others}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiter.cancel()

    async def run_as_leader(self, work: Work, stop: asyncio.Event) -> None:
        """Campaign until `stop`; run `work(lost)` only while leading; release at the end."""
        log.info(
            "campaigning for lease %s/%s as %s (lease %ds, renew every %gs)",
            self.namespace, self.lease, self.identity, self.lease_seconds, self.renew_every,
        )  # fmt: skip
        try:
            while not stop.is_set():
                self._acquired_at = self.clock()
                if await self._attempt(self.renew_every):
                    await self._lead(work, stop)
                await self._wait(stop, self.renew_every * (1 + 0.2 * random.random()))
        finally:
            if self.is_leader or (self._observed and self._observed[0] == self.identity):
                await asyncio.shield(self.release())
            self.is_leader = False

    async def _lead(self, work: Work, stop: asyncio.Event) -> None:
        self.is_leader = True
        self.terms += 1
        last_renew = self._acquired_at
        log.info("%s is now the leader (lease %s/%s)", self.identity, self.namespace, self.lease)
        lost = asyncio.Event()
        task = asyncio.ensure_future(work(lost))
        why = "stopping"
        try:
            while True:
                left = self.renew_deadline - (self.clock() - last_renew)
                await self._wait(stop, min(self.renew_every, max(0.0, left)), task)
                if stop.is_set():
                    break
                if task.done():
                    err = None if task.cancelled() else task.exception()
                    why = f"the work ended ({err!r})" if err else "the work ended"
                    break
                started = self.clock()  # not the answer's time: others count from the write
                if started - last_renew >= self.renew_deadline:
                    why = f"no successful renewal for {self.renew_deadline:g}s"
                    break
                got = await self._attempt(self.renew_deadline - (started - last_renew))
                if got:
                    last_renew = started
                elif got is False:
                    why = "another replica holds the lease"
                    break
        finally:
            lost.set()
            self.is_leader = False
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            level = logging.INFO if why == "stopping" else logging.WARNING
            log.log(level, "%s stopped leading: %s", self.identity, why)

"""Leader election on a coordination.k8s.io/v1 Lease, so two syncer replicas never publish at once.

It follows client-go's Lease lock: a candidate takes a Lease only when it is free, or when its
record has not changed for leaseDurationSeconds by the candidate's *own* clock (no trust in
clock agreement), and a leader that cannot renew for `renew_deadline` (< the lease duration)
stops its work before anyone else may take over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pldns.sync.kube import (
    MANAGED_BY,
    KubeClient,
    KubeError,
    api_error,
    for_update,
    lease_path,
    micro_time,
)

log = logging.getLogger("pldns.lease")

DEFAULT_LEASE_DURATION = 15.0
DEFAULT_RENEW_EVERY = 5.0

Work = Callable[[asyncio.Event], Awaitable[None]]  # gets `lost`, set when leadership ends


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
        update = for_update(doc)
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
            update = for_update(doc)
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

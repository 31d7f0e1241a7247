"""`workers: N`: N DNS processes on the same listen addresses, one control process above them.

The design, chosen for being the simplest that stays robust:

- The parent (`PoolApp`) is the control plane. It loads the config, runs the sync loop (or
  follows `sync.file`), writes the snapshot, serves the HTTP endpoint and handles signals. It
  binds no DNS socket and makes no DNS decision.
- Each worker (`python -m pldns.worker`, see pldns/worker.py) is an ordinary App that binds
  every listen address with SO_REUSEPORT (the kernel spreads clients over the workers by a
  hash of the 4-tuple) and has no sync of its own: it never calls the cloud API and never
  reads the snapshot. A worker is a fresh interpreter (spawned, not forked from a running
  event loop), connected to the parent by one socketpair.
- Over that socketpair the parent sends pickled messages: `init` (config, upstreams, the
  current table), `table` (every new table, the moment the parent swaps its own), `config`
  (a reload), `flush` (POST /cache/flush) and `stop` (drain and exit). Pickle is safe here:
  both ends are this program, and the socketpair is not reachable by anyone else.
- Every worker sends a `report` (its counters) every REPORT_INTERVAL; the parent merges them
  into its own counters, so /metrics and /status cover all workers as one (within
  REPORT_INTERVAL). prometheus-client's multiprocess mode is not used: it only works with
  its own metric objects written to mmap files on every increment (pldns counts in plain ints
  and builds families at scrape time, see stats.py), it cannot carry custom collectors, and
  it leaves files to clean up after a worker dies.
- A worker that exits unexpectedly is counted (`pldns_worker_restarts_total`) and started
  again after `capped_backoff` (0.5 s doubling to 30 s; the count of quick deaths resets
  after a worker has run RESET_AFTER seconds). Workers ignore SIGINT/SIGTERM/SIGHUP (a
  terminal or systemd signals the whole group): the parent reloads and stops them through
  the socketpair, and a worker whose parent is gone (EOF) exits at once.
- Readiness: not in lame duck or shutting down, and at least one worker serving (a dead
  worker's sockets leave the SO_REUSEPORT group, so the others take all clients).

Limits that are per process (`forward.max_inflight`, `tcp.max_connections`, `cache.size`)
apply to each worker; each worker has its own packet cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pickle
import signal
import socket
import struct
import sys
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pldns.app import App
from pldns.config import Config
from pldns.dns.backoff import capped_backoff
from pldns.dns.table import RecordTable
from pldns.httpapi import Route
from pldns.supervisor import Supervisor
from pldns.workerreport import WorkerReport, merge_reports_into_one

log = logging.getLogger("pldns")

REPORT_INTERVAL = 1.0  # seconds between a worker's counter reports
START_TIMEOUT = 30.0  # seconds a worker gets to bind its listeners at start
RESET_AFTER = 60.0  # a worker that ran this long starts the backoff over when it dies
FIRST_BACKOFF, MAX_BACKOFF = 0.5, 30.0
MAX_QUICK_DEATHS = 64  # the backoff is at MAX_BACKOFF long before: counting on changes nothing
STOP_MARGIN = 5.0  # seconds past lame duck + drain before a worker is killed
MAX_MESSAGE = 256 * 1024 * 1024
_HEADER = struct.Struct("!I")


def worker_count(configured: int) -> int:
    """`workers` resolved: 0 (auto) = the CPUs this process may run on."""
    return configured if configured > 0 else max(1, len(os.sched_getaffinity(0)))


# -- framing ---------------------------------------------------------------------------------


def encode(message: tuple[Any, ...]) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


async def receive(reader: asyncio.StreamReader) -> tuple[Any, ...] | None:
    """The next message, or None at EOF (the other end is gone)."""
    try:
        header = await reader.readexactly(_HEADER.size)
        (size,) = _HEADER.unpack(header)
        if size > MAX_MESSAGE:
            raise ValueError(f"message of {size} bytes")
        return pickle.loads(await reader.readexactly(size))  # our own child: trusted
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


# -- the parent's side of one worker and the pool -------------------------------------------


def restart_delay(quick_deaths: int, ran: float) -> tuple[int, float]:
    """A worker died after running `ran` seconds, having died quickly `quick_deaths` times in
    a row before: its new count of quick deaths (bounded) and the seconds to wait before it is
    started again (capped). One that ran RESET_AFTER or longer starts the backoff over."""
    quick = 1 if ran >= RESET_AFTER else min(quick_deaths + 1, MAX_QUICK_DEATHS)
    return quick, capped_backoff(quick, FIRST_BACKOFF, MAX_BACKOFF)


class WorkerProcess(Protocol):
    """What the pool uses of a worker process (asyncio.subprocess.Process; a fake in tests)."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...

    def send_signal(self, sig: int) -> None: ...


class WorkerChannel(Protocol):
    """The parent's end of a worker's socketpair, for writing (an asyncio.StreamWriter)."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...

    def is_closing(self) -> bool: ...


Spawner = Callable[[int], Awaitable[tuple[WorkerProcess, asyncio.StreamReader, WorkerChannel]]]


async def spawn_worker(index: int) -> tuple[WorkerProcess, asyncio.StreamReader, WorkerChannel]:
    """Start `python -m pldns.worker` number `index`, connected to us by a socketpair."""
    ours, theirs = socket.socketpair()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pldns.worker",
            str(theirs.fileno()),
            str(index),
            pass_fds=(theirs.fileno(),),
            stdin=asyncio.subprocess.DEVNULL,
        )
    finally:
        theirs.close()
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    return proc, reader, writer


@dataclass(eq=False)
class Worker:
    index: int
    proc: WorkerProcess | None = None
    writer: WorkerChannel | None = None
    started: asyncio.Future[str | None] | None = None
    serving: bool = False
    report: WorkerReport | None = None
    reported_at: float = 0.0
    spawned_at: float = 0.0
    quick_deaths: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class WorkerPool:
    """Spawns, feeds, watches, restarts and stops the worker processes.

    `spawn`, `clock` and `sleep` are seams for the long-run test (a fake process on a fake
    clock); pldns always runs with the defaults."""

    def __init__(
        self,
        app: PoolApp,
        count: int,
        spawn: Spawner = spawn_worker,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.app = app
        self.spawn, self.clock, self.sleep = spawn, clock, sleep
        self.workers = [Worker(i) for i in range(count)]
        self.restarts = 0
        self.stopping = False
        self.started = False  # every worker answered the first start
        # The last report of every worker that ended: its counts stay in the totals, so a
        # restart never makes a counter go down.
        self.retired: list[WorkerReport] = []

    def running(self) -> int:
        return sum(1 for w in self.workers if w.serving)

    async def start(self) -> None:
        """Spawn every worker and wait until each has bound its listeners (OSError if not)."""
        await asyncio.gather(*(self._spawn(w) for w in self.workers))
        errors = []
        for w in self.workers:
            assert w.started is not None
            try:
                error = await asyncio.wait_for(asyncio.shield(w.started), START_TIMEOUT)
            except TimeoutError:
                error = f"no answer in {START_TIMEOUT:g}s"
            if error is not None:
                errors.append(f"worker {w.index}: {error}")
        if errors:
            self.kill()
            raise OSError("; ".join(errors))
        self.started = True

    async def _spawn(self, w: Worker) -> None:
        proc, reader, writer = await self.spawn(w.index)
        loop = asyncio.get_running_loop()
        w.proc, w.writer, w.serving, w.report = proc, writer, False, None
        w.started = loop.create_future()
        w.spawned_at = self.clock()
        writer.write(encode(self.app.init_message(w.index)))
        for coro in (self._read(w, reader), self._watch(w, proc)):
            task = loop.create_task(coro, name=f"worker-{w.index}")
            w.tasks.add(task)
            task.add_done_callback(w.tasks.discard)

    async def _read(self, w: Worker, reader: asyncio.StreamReader) -> None:
        while (message := await receive(reader)) is not None:
            kind = message[0]
            if kind == "started":
                w.serving = message[1] is None
                if w.started is not None and not w.started.done():
                    w.started.set_result(message[1])
            elif kind == "report":
                w.report, w.reported_at = message[1], time.time()
                self.app.merge_reports()

    async def _watch(self, w: Worker, proc: WorkerProcess) -> None:
        code = await proc.wait()
        w.serving = False
        if w.report is not None:
            w.report.stats.inflight = 0
            w.report.open_connections = 0
            w.report.cache_entries = 0
            w.report.cache["kinds"] = Counter()
            self.retired = [merge_reports_into_one([*self.retired, w.report])]
            w.report = None
        if w.writer is not None:
            w.writer.close()
        if w.started is not None and not w.started.done():
            w.started.set_result(f"exited with status {code} before serving")
        if self.stopping:
            return
        self.restarts += 1
        ran = self.clock() - w.spawned_at
        w.quick_deaths, wait = restart_delay(w.quick_deaths, ran)
        log.error(
            "worker %d (pid %d) exited with status %s after %.1fs; restarting in %gs",
            w.index,
            proc.pid,
            code,
            ran,
            wait,
        )
        await self.sleep(wait)
        if not self.stopping:
            await self._spawn(w)

    def broadcast(self, message: tuple[Any, ...]) -> None:
        data = encode(message)
        for w in self.workers:
            if w.writer is not None and not w.writer.is_closing():
                w.writer.write(data)

    async def stop(self, drain: float) -> None:
        """Ask every worker to stop taking queries and drain; kill what is left after that."""
        self.stopping = True
        self.broadcast(("stop", drain))
        procs = [w.proc for w in self.workers if w.proc is not None]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), drain + STOP_MARGIN)
        self.kill()

    def kill(self) -> None:
        self.stopping = True
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(signal.SIGKILL)
            w.serving = False

    def describe(self) -> list[dict[str, Any]]:
        out = []
        for w in self.workers:
            rep = w.report
            out.append(
                {
                    "index": w.index,
                    "pid": w.proc.pid if w.proc is not None else None,
                    "serving": w.serving,
                    "table_serial": rep.serial if rep else None,
                    "owned_names": rep.owned_names if rep else None,
                    "queries": sum(rep.stats.requests.values()) if rep else 0,
                    "reported_at": w.reported_at or None,
                }
            )
        return out


# -- the parent ------------------------------------------------------------------------------


class PoolApp(App):
    """The control process of `workers: N`: sync, HTTP, signals; DNS is the workers' job."""

    serves_dns = False

    def __init__(self, config: Config, count: int, **kwargs: Any) -> None:
        self.pool: WorkerPool | None = None
        super().__init__(config, **kwargs)
        # self.cache stays empty here: its counters are the workers' summed (merge_reports).
        self.pool = WorkerPool(self, count)
        self._open_connections = 0
        self._cache_entries = 0

    def init_message(self, index: int) -> tuple[Any, ...]:
        return ("init", self.config, self.upstreams, self.resolver.table, self.config_version)

    async def _start_serving(self) -> None:
        assert self.pool is not None
        await self.pool.start()
        log.info("%d workers serving (SO_REUSEPORT)", len(self.pool.workers))

    def swap_table(self, table: RecordTable) -> None:
        super().swap_table(table)
        if self.pool is not None:
            self.pool.broadcast(("table", table))

    async def apply(self, new: Config, version: str | None = None) -> None:
        await super().apply(new, version)
        assert self.pool is not None
        self.pool.broadcast(("config", new, self.upstreams, self.config_version))

    def flush_cache(self) -> int:
        assert self.pool is not None
        self.pool.broadcast(("flush",))
        count = self._cache_entries
        log.info("cache flush sent to the workers (%d entries at their last report)", count)
        return count

    def worker_counts(self) -> tuple[int, int]:
        assert self.pool is not None
        return self.pool.running(), self.pool.restarts

    def open_connections(self) -> int:
        return self._open_connections

    def cache_entries(self) -> int:
        return self._cache_entries

    def ready(self) -> tuple[bool, str]:
        if self.lame_duck or self.shutting_down:
            return False, "shutting down"
        if self.pool is None or not self.pool.started:
            return False, "workers starting"
        if not self.pool.running():
            return False, "no worker serving"
        if self.config.sync.ready_requires_table:
            ok, why = self.table_state()
            if not ok:
                return False, why
        return True, "ready"

    def merge_reports(self) -> None:
        """The workers' latest counters, summed into this process's (what /metrics reads)."""
        assert self.pool is not None
        reports = [*self.pool.retired, *(w.report for w in self.pool.workers if w.report)]
        one = merge_reports_into_one(reports)
        self.stats = one.stats
        for up in self.forwarder.upstreams:
            up.stats = self.stats.upstream(up.name)
            up.last_error = next((e for r in reports if (e := r.last_errors.get(up.name))), "")
        self._open_connections = one.open_connections
        for name, value in one.cache.items():
            setattr(self.cache, name, value)
        self._cache_entries = one.cache_entries
        if self.leaks is not None:
            self.leaks.total = one.leaks_total
            self.leaks.names = OrderedDict((r.name, r) for r in one.leaks)

    async def stop(self, drain: float = 5.0) -> None:
        self.shutting_down = True
        self.stopping.set()
        if self.sync_task is not None:
            self.sync_task.cancel()
        if self.pool is not None:
            await self.pool.stop(drain)
        self.close()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.kill()
        self.forwarder.close()


class PoolSupervisor(Supervisor):
    """The parent's signals, reloads and HTTP; /status also lists the workers."""

    def routes(self) -> dict[str, Route]:
        routes = super().routes()
        inner = routes["/status"]
        app = self.app
        assert isinstance(app, PoolApp)

        def status() -> tuple[int, str, bytes]:
            code, ctype, body = inner()
            doc = json.loads(body)
            assert app.pool is not None
            running, restarts = app.worker_counts()
            doc["workers"] = {
                "count": len(app.pool.workers),
                "running": running,
                "restarts": restarts,
                "each": app.pool.describe(),
            }
            return code, ctype, json.dumps(doc, indent=2, default=str).encode() + b"\n"

        routes["/status"] = status
        return routes

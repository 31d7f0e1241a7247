"""One DNS worker of `workers: N` (`python -m pldns.worker FD INDEX`, started by the parent).

It reads its config, upstreams and table from the socketpair `FD`, binds the listen addresses
with SO_REUSEPORT, answers, and reports its counters; see pldns/workers.py for the design.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import signal
import socket
import sys
from dataclasses import replace
from typing import Any

from pldns import gctune, logs
from pldns.app import App
from pldns.config import Config
from pldns.config.schema import ConfigError
from pldns.dns.table import RecordTable
from pldns.workerreport import report_of
from pldns.workers import _HEADER, REPORT_INTERVAL, encode, receive

log = logging.getLogger("pldns")


def worker_config(config: Config) -> Config:
    """The config a worker runs: no sync source, no snapshot (the parent owns both)."""
    return replace(config, sync=replace(config.sync, source="static", snapshot="", file=""))


class WorkerApp(App):
    """An App that shares its ports (SO_REUSEPORT) and serves only the parent's tables."""

    reuse_port = True

    def swap_table(self, table: RecordTable) -> None:
        """Tables from this process's own (static) syncer are ignored: the parent's rule."""

    def adopt(self, table: RecordTable) -> None:
        App.swap_table(self, table)
        self.sync_state.origin = "parent"


async def _report(app: WorkerApp, writer: asyncio.StreamWriter) -> None:
    while not writer.is_closing():
        writer.write(encode(("report", report_of(app))))
        await asyncio.sleep(REPORT_INTERVAL)


async def _handle(app: WorkerApp, message: tuple[Any, ...]) -> None:
    kind = message[0]
    if kind == "table":
        app.adopt(message[1])
    elif kind == "config":
        _, config, _upstreams, version = message
        try:
            await app.apply(worker_config(config), version)
        except (ConfigError, OSError) as err:
            log.error("worker: the new config could not be applied: %s", err)
    elif kind == "flush":
        app.flush_cache()


async def serve(sock: socket.socket, init: tuple[Any, ...]) -> int:
    _, config, upstreams, table, version = init
    app = WorkerApp(worker_config(config), upstreams=upstreams, version=version)
    app.adopt(table)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    try:
        await app.start()
    except OSError as err:
        writer.write(encode(("started", f"cannot listen: {err}")))
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        return 1
    gctune.tune()
    writer.write(encode(("started", None)))
    reporter = asyncio.get_running_loop().create_task(_report(app, writer))
    drain: float | None = None
    while (message := await receive(reader)) is not None:
        if message[0] == "stop":
            drain = message[1]
            break
        try:
            await _handle(app, message)
        except Exception:  # one bad message must not take the worker's DNS down
            log.exception("worker: handling %r failed", message[0])
    if drain is None:  # the parent is gone: nobody to report to or to wait for
        app.close()
        return 0
    await app.stop(drain)
    reporter.cancel()
    with contextlib.suppress(ConnectionError):
        writer.write(encode(("report", report_of(app))))
        await writer.drain()
    return 0


def _read_init(sock: socket.socket) -> tuple[Any, ...]:
    """The first message, read before the event loop exists (blocking, exact sizes: nothing
    after it is consumed)."""

    def exactly(size: int) -> bytes:
        data = bytearray()
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            if not chunk:
                raise SystemExit("pldns worker: the parent closed the connection")
            data += chunk
        return bytes(data)

    (size,) = _HEADER.unpack(exactly(_HEADER.size))
    message = pickle.loads(exactly(size))  # our own parent: trusted
    if not isinstance(message, tuple) or message[0] != "init":
        raise SystemExit("pldns worker: no init message from the parent")
    return message


def main(argv: list[str]) -> int:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # the parent decides; see pldns/workers.py
    sock = socket.socket(fileno=int(argv[0]))
    init = _read_init(sock)
    config: Config = init[1]
    logs.setup(config.log.level, config.log.format)
    from pldns.cli import _install_loop

    _install_loop()
    return asyncio.run(serve(sock, init))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The process lifecycle around an App: signals, HTTP endpoint, reloads, lame duck, drain.

Signal handlers only set flags. SIGHUP (or a change to the config file) reloads; an invalid
new config is logged and counted and the old one keeps running. SIGTERM/SIGINT start the
shutdown: lame duck (/readyz fails, DNS still answers), stop accepting, drain in-flight
queries, exit 0. A second SIGTERM/SIGINT skips what is left and exits 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

from pldns import logs
from pldns.app import App, config_version
from pldns.config import Config, load_config
from pldns.config.schema import ConfigError
from pldns.httpapi import HttpApi, Route, ops_routes
from pldns.notify import notify

log = logging.getLogger("pldns")

READY_POLL = 0.2


def file_signature(path: str) -> tuple[int, int, int] | None:
    """Inode, mtime and size of the file behind `path` (symlinks followed: ConfigMap swaps)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


async def wait_event(event: asyncio.Event, timeout: float | None) -> None:
    """Until `event` is set or `timeout` seconds have passed (None: no timeout)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)


class Supervisor:
    """`wait`, `signature` and `load` are seams for the long-run test of the config watch (a
    fake clock and file); pldns always runs with the defaults."""

    def __init__(
        self,
        app: App,
        wait: Callable[[asyncio.Event, float | None], Awaitable[None]] = wait_event,
        signature: Callable[[str], tuple[int, int, int] | None] = file_signature,
        load: Callable[[str], Config] = load_config,
    ) -> None:
        self.app = app
        self.wait, self.signature, self.load = wait, signature, load
        self.reload_wanted = asyncio.Event()
        self.stop_wanted = asyncio.Event()
        self.force = asyncio.Event()
        self.signals = 0
        self.http: HttpApi | None = None
        self._watched = signature(app.config_path) if app.config_path else None

    # -- signal handlers: flags only -------------------------------------------------------

    def on_stop_signal(self) -> None:
        self.signals += 1
        self.stop_wanted.set()
        if self.signals > 1:
            self.force.set()

    def on_reload_signal(self) -> None:
        self.reload_wanted.set()

    # -- HTTP --------------------------------------------------------------------------------

    def routes(self) -> dict[str, Route]:
        from pldns.metrics import render
        from pldns.status import build_status

        app = self.app
        return ops_routes(app.ready, lambda: render(app), lambda: build_status(app))

    def actions(self) -> dict[str, Route]:
        """POST routes: operations that change state."""
        app = self.app

        def cache_flush() -> tuple[int, str, bytes]:
            flushed = app.flush_cache()
            return 200, "application/json", json.dumps({"flushed": flushed}).encode() + b"\n"

        return {"/cache/flush": cache_flush}

    async def start_http(self) -> None:
        listen = self.app.config.http.listen
        if listen is None:
            return
        self.http = HttpApi(self.routes(), self.actions())
        await self.http.start(*listen)
        log.info(
            "HTTP endpoint on %s:%d (/metrics /healthz /readyz /status, POST /cache/flush)",
            *listen,
        )

    # -- reload ------------------------------------------------------------------------------

    async def reload(self, why: str) -> bool:
        app = self.app
        path = app.config_path
        if not path:
            return False
        old_http = app.config.http
        try:
            raw = Path(path).read_bytes()
            new = self.load(path)
            await app.apply(new, config_version(new, raw))
        except ConfigError as err:
            app.reloads["failure"] += 1
            log.error(
                "reload (%s) rejected, still running the old config: %s",
                why,
                "; ".join(err.problems),
            )
            return False
        except OSError as err:
            app.reloads["failure"] += 1
            log.error("reload (%s) failed, still running the old config: %s", why, err)
            return False
        app.reloads["success"] += 1
        logs.setup(new.log.level, new.log.format)
        log.info("config reloaded (%s), version %s", why, app.config_version)
        if new.http != old_http:
            await self._switch_http(old_http.listen)
        return True

    async def _switch_http(self, old_listen: tuple[str, int] | None) -> None:
        """Move the HTTP endpoint; if the new address cannot be bound, keep the old one (#9:
        a busy port used to close the old server first and then kill the config watcher)."""
        old = self.http
        new_listen = self.app.config.http.listen
        try:
            await self.start_http()  # the old one still serves meanwhile
        except OSError as err:
            self.http = old
            same_port = old is not None and new_listen is not None and old_listen is not None
            if not (same_port and new_listen[1] == old_listen[1]):  # type: ignore[index]
                log.error("http.listen: %s; the HTTP endpoint stays where it was", err)
                return
            # The same port on another address may clash with our own socket: free it, retry.
            await old.close()  # type: ignore[union-attr]
            self.http = None
            try:
                await self.start_http()
                return
            except OSError as again:
                log.error("http.listen: %s; the HTTP endpoint stays where it was", again)
            try:
                self.http = HttpApi(self.routes())
                await self.http.start(*old_listen)  # type: ignore[misc]
            except OSError as back:
                self.http = None
                log.error("HTTP endpoint off: cannot listen on %s:%d again: %s", *old_listen, back)  # type: ignore[misc]
            return
        if old is not None:
            await old.close()
        if new_listen is None:
            self.http = None

    async def watch(self) -> None:
        """Reload on SIGHUP, or when the config file changes (polled)."""
        while True:
            poll = self.app.config.lifecycle.reload_poll
            await self.wait(self.reload_wanted, poll if poll > 0 else None)
            try:
                if self.reload_wanted.is_set():
                    self.reload_wanted.clear()
                    self._watched = self.signature(self.app.config_path or "")
                    await self.reload("SIGHUP")
                    continue
                sig = self.signature(self.app.config_path or "")
                if sig is not None and sig != self._watched:
                    self._watched = sig
                    await self.reload("file changed")
            except Exception:  # supervised: one bad reload never ends the watch
                self.app.reloads["failure"] += 1
                log.exception("reload failed; still watching the config")

    async def announce_ready(self) -> None:
        while not self.app.ready()[0]:
            await asyncio.sleep(READY_POLL)
        log.info("ready")
        notify("READY=1")

    # -- the whole life ----------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.on_stop_signal)
        loop.add_signal_handler(signal.SIGHUP, self.on_reload_signal)
        app = self.app
        try:
            await self.start_http()
            await app.start()
        except OSError as err:
            log.error("cannot listen: %s", err)
            app.close()
            await self._close_http()
            return 1
        helpers = [
            loop.create_task(self.announce_ready(), name="ready"),
            loop.create_task(self.watch(), name="config-watch"),
        ]
        await self.stop_wanted.wait()
        for task in helpers:
            task.cancel()
        code = await self.shutdown()
        await self._close_http()
        return code

    async def _interruptible(self, coro: Awaitable[object], timeout: float | None = None) -> bool:
        """Run a shutdown step; False if a second signal came first."""
        step = asyncio.ensure_future(coro)
        forced = asyncio.ensure_future(self.force.wait())
        done, _ = await asyncio.wait(
            {step, forced}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        for fut in (step, forced):
            if fut not in done:
                fut.cancel()
        return forced not in done

    async def shutdown(self) -> int:
        app = self.app
        lc = app.config.lifecycle
        notify("STOPPING=1")
        app.lame_duck = True
        log.info("shutting down: lame duck for %gs (not ready, still answering)", lc.lame_duck)
        if not await self._interruptible(asyncio.sleep(lc.lame_duck)):
            return self._forced()
        if not await self._interruptible(app.stop(lc.drain)):
            return self._forced()
        log.info("stopped")
        return 0

    def _forced(self) -> int:
        log.warning("second signal: exiting now")
        self.app.close()
        return 1

    async def _close_http(self) -> None:
        if self.http is not None:
            await self.http.close()
            self.http = None

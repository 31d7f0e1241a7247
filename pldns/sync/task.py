"""Supervision for a long-running background coroutine (the sync loop).

A background task that ends unseen is the worst failure there is: everything looks up and
nothing updates again. `supervise` runs the body; if it ever ends while it should still be
running (an exception of any class, or a plain return), that is logged with the reason,
counted in `TaskHealth`, and the body is started again after a capped backoff (1, 2, 4, ...
up to 60 s; the count of crashes in a row resets once the body has run for the cap).
Readiness, /status and the metrics read `TaskHealth`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pldns.dns.backoff import capped_backoff

log = logging.getLogger("pldns.sync")

FIRST_RESTART = 1.0
MAX_RESTART = 60.0


@dataclass
class TaskHealth:
    running: bool = False  # the body is running right now (False while waiting to restart)
    restarts: int = 0  # times the body ended unexpectedly and was restarted
    crashes_in_a_row: int = 0
    last_crash: str = ""  # why it ended last time ("" if never)
    last_crash_at: float | None = None


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def supervise(
    name: str,
    body: Callable[[], Awaitable[None]],
    stop: asyncio.Event,
    health: TaskHealth,
    clock: Callable[[], float] = time.monotonic,
    wait: Callable[[asyncio.Event, float], Awaitable[None]] = _wait,
    first: float = FIRST_RESTART,
    cap: float = MAX_RESTART,
) -> None:
    """Run `body()` until `stop` is set, restarting it (with backoff) whenever it ends."""
    while not stop.is_set():
        started = clock()
        health.running = True
        error: BaseException | None = None
        try:
            await body()
            why = "returned"
        except asyncio.CancelledError:
            health.running = False
            raise
        except (KeyboardInterrupt, SystemExit):
            health.running = False
            raise
        except BaseException as err:  # any other class: a bug must not end the task unseen
            why = f"{type(err).__name__}: {err}"
            error = err
        health.running = False
        if stop.is_set():
            return
        if clock() - started >= cap:
            health.crashes_in_a_row = 0
        health.crashes_in_a_row += 1
        health.restarts += 1
        health.last_crash = why
        health.last_crash_at = time.time()
        delay = capped_backoff(health.crashes_in_a_row, first, cap)
        log.error(
            "%s task ended (%s); restart %d in %.1fs",
            name, why, health.restarts, delay, exc_info=error,
        )  # fmt: skip
        await wait(stop, delay)

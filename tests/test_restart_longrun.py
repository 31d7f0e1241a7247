"""Long runs on a fake clock for the two restart loops of the control process: the worker
pool of `workers: N` (pldns/workers.py, a worker that keeps dying) and the config watcher
(pldns/supervisor.py, a config file that keeps failing to load).

No process is started and nothing sleeps: the pool gets a fake spawner, clock and sleep, the
watcher a fake wait and file signature (the seams both take; pldns runs with the defaults).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import random
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from pldns.app import App
from pldns.config import Config, load_config, parse_config
from pldns.config.schema import ConfigError
from pldns.dns.stats import Stats
from pldns.metrics import render
from pldns.supervisor import Supervisor
from pldns.workerreport import WorkerReport
from pldns.workers import (
    FIRST_BACKOFF,
    MAX_BACKOFF,
    MAX_QUICK_DEATHS,
    RESET_AFTER,
    PoolApp,
    WorkerPool,
    encode,
    restart_delay,
)
from tests.fakes.clock import Clock
from tests.fakes.proc import base_config, free_port

STEPS = 1_000_000


class LevelCounts(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()
        self.last = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[record.levelname] += 1
        self.last = record.getMessage()


@contextlib.contextmanager
def counted_logs() -> Iterator[LevelCounts]:
    """pldns's log records counted by level, and kept out of pytest's capture (10^6 records)."""
    logger = logging.getLogger("pldns")
    handler = LevelCounts()
    propagate, level = logger.propagate, logger.level
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.propagate, logger.level = propagate, level


def expected_wait(deaths_since_reset: int) -> float:
    """The backoff the pool documents: 0.5 s doubling to 30 s (worked out here, not reused)."""
    return min(MAX_BACKOFF, FIRST_BACKOFF * 2.0 ** min(deaths_since_reset - 1, 20))


def lifetimes(rng: random.Random, count: int) -> list[float]:
    """How long each worker runs before it dies: mostly quick deaths (0-10 s, under
    RESET_AFTER), and 1 in 997 a long life (RESET_AFTER exactly, or more) that resets the
    backoff. Long runs of quick deaths in between, so the cap is reached and held."""
    return [
        RESET_AFTER + (i % 3) * rng.random() * 100 if i % 997 == 996 else rng.random() * 10
        for i in range(count)
    ]


# -- the worker pool: the decision, 10^6 deaths ---------------------------------------------


def test_worker_restart_delay_stays_capped_over_a_million_deaths() -> None:
    rng = random.Random(14)
    clock = Clock()
    quick, since_reset, resets, longest = 0, 0, 0, 0.0
    for ran in lifetimes(rng, STEPS):
        clock.now += ran
        quick, wait = restart_delay(quick, ran)
        since_reset = 1 if ran >= RESET_AFTER else since_reset + 1
        resets += ran >= RESET_AFTER
        assert wait == expected_wait(since_reset)
        assert 1 <= quick <= MAX_QUICK_DEATHS
        longest = max(longest, wait)
        clock.now += wait
    assert longest == MAX_BACKOFF and resets == STEPS // 997
    # The first deaths of a fresh worker, and a worker that ran exactly RESET_AFTER.
    assert [restart_delay(n, 1.0)[1] for n in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert restart_delay(MAX_QUICK_DEATHS, RESET_AFTER) == (1, FIRST_BACKOFF)
    assert restart_delay(MAX_QUICK_DEATHS, RESET_AFTER - 0.001) == (MAX_QUICK_DEATHS, MAX_BACKOFF)


# -- the worker pool: the whole restart loop with fake processes -----------------------------


class FakeProcess:
    """A worker process that runs `ran` seconds of fake time and then exits with status 1."""

    pids = itertools.count(1000)

    def __init__(self, clock: Clock, ran: float) -> None:
        self.pid = next(self.pids)
        self.returncode: int | None = None
        self.clock, self.ran = clock, ran

    async def wait(self) -> int:
        self.clock.now += self.ran
        self.returncode = 1
        return 1

    def send_signal(self, sig: int) -> None:
        self.returncode = -sig


class FakeChannel:
    def __init__(self) -> None:
        self.closed = False
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def one_query_report() -> WorkerReport:
    stats = Stats()
    stats.requests[("udp", "A")] = 1
    cache = {k: {} for k in ("kinds", "hits", "stale", "prefetches", "evictions")}
    return WorkerReport(0, 1, 2, True, stats, 3, {}, {**cache, "misses": 1, "coalesced": 0}, 4)


def test_worker_pool_restart_loop_stays_capped_and_bounded_over_many_deaths() -> None:
    """A worker that dies again and again (mostly quickly, now and then after a long life),
    through the real spawn/watch/restart code: the restart counter counts every death, each
    wait is the capped backoff for the lifetimes it had, and the tasks, the retired reports
    and the worker's state stay bounded. Each dead worker reported one query: the totals
    never lose one, and each death is logged once. (Fewer deaths than the 10^6 above: each
    is a few real asyncio tasks, ~0.1 ms.)"""
    deaths = 50_000
    runs = lifetimes(random.Random(41), deaths + 1)
    clock = Clock()
    sleeps: list[float] = []
    peaks = {"tasks": 0, "worker_tasks": 0, "retired": 0}
    started = encode(("started", None))
    reported = started + encode(("report", one_query_report()))  # 1 in 100: they cost a merge
    app = PoolApp(parse_config(base_config("127.0.0.1", 53, ["127.0.0.1:9"])), 1)
    spawned = 0

    async def spawn(index: int) -> tuple[FakeProcess, asyncio.StreamReader, FakeChannel]:
        nonlocal spawned
        spawned += 1
        if spawned == deaths + 1:
            pool.stopping = True  # the last one: its death is not restarted (nor logged)
        w = pool.workers[0]
        peaks["tasks"] = max(peaks["tasks"], len(asyncio.all_tasks()))
        peaks["worker_tasks"] = max(peaks["worker_tasks"], len(w.tasks))
        peaks["retired"] = max(peaks["retired"], len(pool.retired))
        # Out of bounds ends the chain at once (the restart that raises is the last one).
        assert w.quick_deaths <= MAX_QUICK_DEATHS and len(w.tasks) <= 3
        reader = asyncio.StreamReader()
        reader.feed_data(reported if spawned % 100 == 0 else started)
        reader.feed_eof()
        return FakeProcess(clock, runs[spawned - 1]), reader, FakeChannel()

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.now += seconds

    pool = app.pool = WorkerPool(app, 1, spawn=spawn, clock=clock, sleep=sleep)

    async def main() -> None:
        await pool.start()
        for _ in range(10 * deaths):  # bounded: each turn lets the ready tasks run once
            if all(task.done() for task in pool.workers[0].tasks):
                return
            await asyncio.sleep(0)
        raise AssertionError("the restart loop did not settle")

    with counted_logs() as logged:
        asyncio.run(main())
    assert spawned == deaths + 1 and pool.restarts == deaths
    since_reset, expected = 0, []
    for ran in runs[:deaths]:
        since_reset = 1 if ran >= RESET_AFTER else since_reset + 1
        expected.append(expected_wait(since_reset))
    assert sleeps == expected and max(sleeps) == MAX_BACKOFF
    # At a restart: the dying worker's tasks, one done but still in its set until its
    # done-callback runs, and the main task. Not one more after all those deaths.
    assert peaks["tasks"] <= 3 and peaks["worker_tasks"] <= 3 and peaks["retired"] == 1
    assert app.stats.requests[("udp", "A")] == (deaths + 1) // 100  # every one reported kept
    assert f"pldns_worker_restarts_total {deaths}.0" in render(app)[0].decode()
    assert logged.counts == {"ERROR": deaths}, "one line a restart, nothing more"
    app.close()


# -- the config watcher ----------------------------------------------------------------------


class Stop(BaseException):
    """Ends the watch loop from the fake wait (it survives any Exception, as it must)."""


class FakeFile:
    """The config file's signature on a fake clock: `touch()` is an edit (a new mtime)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.edits = 0
        self.sig: tuple[int, int, int] = (1, 0, 100)

    def touch(self) -> None:
        self.edits += 1
        self.sig = (1, int(self.clock.now * 1e9), 100 + self.edits % 2)

    def __call__(self, path: str) -> tuple[int, int, int]:
        return self.sig


def served_config(tmp_path: Path, **lifecycle: float) -> tuple[Path, Config]:
    config = base_config("127.0.0.1", free_port(), ["127.0.0.1:9"])
    config["lifecycle"] = {**config["lifecycle"], **lifecycle}
    path = tmp_path / "pldns.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, load_config(path)


def bad_load(tmp_path: Path) -> Callable[[str], Config]:
    """A load that fails as a file with a bad value fails (the real problems, parsed once:
    a real parse a step would take 10^6 x 0.3 ms)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("region: cn-hangzhou\nlisten: ['127.0.0.1:99999']\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    problems = list(err.value.problems)
    assert any("listen" in p for p in problems)

    def load(path: str) -> Config:
        raise ConfigError(list(problems))

    return load


def test_config_watch_keeps_the_old_config_over_a_million_failed_loads(tmp_path: Path) -> None:
    """10^6 polls of a config file that changes on 2 polls of 3 and never loads: the old
    config stays in force, the poll stays its reload_poll, every failure is counted and
    logged once (a poll without a change does nothing), and nothing grows."""
    path, config = served_config(tmp_path, reload_poll=2.0)
    app = App(config, config_path=str(path))
    clock = Clock()
    file = FakeFile(clock)
    timeouts: Counter[float | None] = Counter()
    tasks: set[int] = set()
    polls = 0

    async def wait(event: asyncio.Event, timeout: float | None) -> None:
        nonlocal polls
        polls += 1
        timeouts[timeout] += 1
        clock.now += timeout or 0.0
        if polls % 1000 == 0:
            tasks.add(len(asyncio.all_tasks()))
        if polls > STEPS:
            raise Stop
        if polls % 3:
            file.touch()

    sup = Supervisor(app, wait=wait, signature=file, load=bad_load(tmp_path))
    with counted_logs() as logged, pytest.raises(Stop):
        asyncio.run(sup.watch())
    failures = STEPS - STEPS // 3
    assert file.edits == failures and app.reloads == {"failure": failures}
    assert logged.counts == {"ERROR": failures} and "still running the old config" in logged.last
    assert "listen" in logged.last
    assert app.config is config and timeouts == {2.0: STEPS + 1}
    assert tasks == {1}, "the watch task alone: nothing spawned per poll"
    assert sup._watched == file.sig


def test_config_watch_flapping_good_and_bad_follows_the_good_ones(
    tmp_path: Path, root_logging: None
) -> None:
    """A file that flaps bad, good A, bad, good B ... (A polls every 1 s, B every 4 s): each
    good one is applied for real on a serving App, each bad one keeps the one before, the
    poll follows the config in force, and the App's tasks and listeners stay as they were."""
    steps = 20_000  # each good step is a real App.apply (the bad ones: see the test above)
    path, a = served_config(tmp_path, reload_poll=1.0)
    b = dataclasses.replace(a, lifecycle=dataclasses.replace(a.lifecycle, reload_poll=4.0))
    fail = bad_load(tmp_path)
    clock = Clock()
    file = FakeFile(clock)
    timeouts: list[float | None] = []
    tasks: set[int] = set()
    nxt: list[Config | None] = [None]

    def load(p: str) -> Config:
        if nxt[0] is None:
            fail(p)
        assert nxt[0] is not None
        return nxt[0]

    async def main() -> None:
        app = App(a, config_path=str(path))
        await app.start()
        listeners = list(app.listeners)
        forwarder = app.forwarder

        async def wait(event: asyncio.Event, timeout: float | None) -> None:
            timeouts.append(timeout)
            clock.now += timeout or 0.0
            tasks.add(len(asyncio.all_tasks()))
            if len(timeouts) > steps:
                raise Stop
            step = len(timeouts)
            nxt[0] = None if step % 2 else (a if step % 4 == 2 else b)
            file.touch()

        sup = Supervisor(app, wait=wait, signature=file, load=load)
        try:
            with pytest.raises(Stop):
                await sup.watch()
            assert app.listeners == listeners and app.forwarder is forwarder
            assert app.reloads == {"failure": steps // 2, "success": steps // 2}
            assert app.config is b  # the last good one
        finally:
            await app.stop(0)

    with counted_logs() as logged:
        asyncio.run(main())
    # The poll after each step is the reload_poll of the config in force after it.
    expected = [1.0, 1.0] + [1.0 if i % 4 in (2, 3) else 4.0 for i in range(2, steps + 1)]
    assert timeouts == expected
    assert len(tasks) == 1, "as many tasks at the end as at the start"
    assert logged.counts["ERROR"] == steps // 2 and logged.counts["INFO"] >= steps // 2

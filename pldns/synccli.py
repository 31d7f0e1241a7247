"""`pldns sync`: the sync loop alone (no DNS listener), publishing the snapshot."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from pldns import logs
from pldns.config import Config
from pldns.config.sync import SOURCE_PRIVATELINK
from pldns.httpapi import HttpApi, ops_routes
from pldns.metrics import render_sync
from pldns.sync.loop import Syncer, SyncState
from pldns.sync.privatelink import PrivateLinkSource, api_host
from pldns.sync.snapshot import FileSink, SnapshotSink
from pldns.sync.task import supervise
from pldns.syncstatus import build_sync_status
from pldns.tabletext import format_table

if TYPE_CHECKING:
    from pldns.sync.lease import LeaseElector

log = logging.getLogger("pldns.sync")


def print_round(source: PrivateLinkSource, out: TextIO) -> None:
    columns = ("service", "domains", "endpoint", "zone", "ip", "status")
    rows = [[r[c] for c in columns] for r in source.rows]
    seen = {r["service"] for r in source.rows}
    for service in source.services:
        if service.name not in seen and service.matcher is not None:
            rows.append(
                [service.name, " ".join(service.domains), "-", "-", "-",
                 f"no endpoint matches {service.matcher.describe()}"]
            )  # fmt: skip
    rows.sort(key=lambda r: (r[0], r[2], r[3]))
    print(format_table(columns, rows), file=out)


def sinks_for(config: Config, out_path: str | None) -> list[SnapshotSink]:
    path = out_path or config.sync.snapshot
    return [FileSink(path)] if path else []


async def run_sync(
    config: Config,
    once: bool,
    sinks: list[SnapshotSink],
    source: PrivateLinkSource | None = None,
    out: TextIO = sys.stdout,
    elector: LeaseElector | None = None,
) -> int:
    logs.learn_credentials(config.privatelink.credentials.file)
    source = source or PrivateLinkSource(config.privatelink, config.region, config.services)
    syncer = Syncer(config, source, lambda table: None, sinks, SyncState())
    log.info(
        "syncing from %s (VPC %s) every %gs, publishing to %s",
        api_host(config.privatelink, source.region),
        config.privatelink.vpc_id,
        config.sync.interval,
        ", ".join(s.name for s in sinks) or "nowhere",
    )
    if elector is None:
        await syncer.adopt_published()  # a new process starts from what the nodes have
    if once:
        ok = await syncer.round()
        if ok:
            print_round(source, out)
            if source.rows and syncer.state.partial:
                print("some endpoints failed; their services kept no new data", file=out)
            if syncer.state.snapshot_errors:
                print("publishing the snapshot failed (see the log)", file=sys.stderr)
                return 1
            return 0
        print(f"sync failed: {syncer.state.last_error}", file=sys.stderr)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    current = [syncer]  # the Syncer of the current term (what /status shows)
    http = await start_http(config, syncer.state, elector, lambda: current[0])
    try:
        if elector is not None:

            async def term(lost: asyncio.Event) -> None:
                # Each term starts from what is published now (another leader may have
                # written since this replica last led), over what this replica knew.
                fresh = Syncer(config, syncer.source, lambda t: None, sinks, syncer.state)
                fresh.fed = dict(current[0].fed)
                current[0] = fresh
                await fresh.adopt_published()
                await supervise("sync", lambda: fresh.run(lost), lost, syncer.state.task)

            await elector.run_as_leader(term, stop)
        else:
            await supervise("sync", lambda: syncer.run(stop), stop, syncer.state.task)
    finally:
        if http is not None:
            await http.close()
    return 0


def sync_ready(state: SyncState, elector: LeaseElector | None) -> tuple[bool, str]:
    """A syncer is ready once a round has worked; a replica standing by is ready too."""
    if elector is not None and not elector.is_leader:
        return True, "standing by (not the leader)"
    if state.task.restarts and not state.task.running:
        return False, f"sync task restarting after: {state.task.last_crash}"
    if state.last_success is None:
        return False, f"no successful sync yet ({state.last_error or 'first round running'})"
    return True, "ready"


async def start_http(
    config: Config,
    state: SyncState,
    elector: LeaseElector | None,
    current: Callable[[], Syncer] | None = None,
) -> HttpApi | None:
    """/healthz, /readyz, /metrics (the sync families) and /status for the syncer itself."""
    if config.http.listen is None:
        return None

    started_at = time.time()

    def status() -> dict[str, object]:
        syncer = current() if current is not None else None
        ready = sync_ready(state, elector)
        return build_sync_status(config, state, ready, elector, syncer, started_at)

    http = HttpApi(
        ops_routes(
            lambda: sync_ready(state, elector),
            lambda: render_sync(state, lambda: sync_ready(state, elector)[0]),
            status,
        )
    )
    await http.start(*config.http.listen)
    log.info("HTTP endpoint on %s:%d (/metrics /healthz /readyz /status)", *config.http.listen)
    return http


async def run_sync_command(config: Config, args: argparse.Namespace) -> int:
    """`pldns sync` with its options: file and ConfigMap sinks, Lease leader election."""
    level = getattr(args, "log_level", None) or config.log.level
    logs.setup(level, config.log.format)
    sinks = sinks_for(config, args.out)
    if not (getattr(args, "configmap", None) or getattr(args, "lease", None)):
        return await run_sync(config, args.once, sinks)
    from pldns.sync.kube import (
        ConfigMapSink,
        KubeClient,
        KubeConfigError,
        default_identity,
        kube_config,
        parse_ref,
    )
    from pldns.sync.lease import LeaseElector

    try:
        if args.once and args.lease:
            raise KubeConfigError("--lease is for the long-running syncer, not with --once")
        kube = kube_config(args.kube_api, args.kube_token_file)
        configmap = (
            parse_ref(args.configmap, kube.namespace, "--configmap") if args.configmap else None
        )
        lease = parse_ref(args.lease, kube.namespace, "--lease") if args.lease else None
    except KubeConfigError as err:
        print(f"pldns: {err}", file=sys.stderr)
        return 2
    client = KubeClient(kube)
    try:
        if configmap:
            sinks.append(ConfigMapSink(client, *configmap))
        elector = LeaseElector(client, *lease, default_identity()) if lease else None
        return await run_sync(config, args.once, sinks, elector=elector)
    finally:
        await client.close()


def check_sync_config(config: Config) -> str | None:
    if config.sync.source != SOURCE_PRIVATELINK:
        return "sync.source: expected privatelink for `pldns sync`"
    return None

"""The `pldns` command: serve, check, version."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from pldns import __version__
from pldns.config import Config, load_config
from pldns.errors import ConfigError
from pldns.resolvconf import upstream_addresses

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pldns",
        description="DNS forwarding proxy answering cloud API names with PrivateLink IPs.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the DNS proxy")
    serve.add_argument("--config", "-c", required=True, help="YAML config file")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    check = sub.add_parser("check", help="validate a config and show what would be served")
    check.add_argument("--config", "-c", required=True, help="YAML config file")
    sync = sub.add_parser("sync", help="run the PrivateLink sync alone and publish the snapshot")
    sync.add_argument("--config", "-c", required=True, help="YAML config file")
    sync.add_argument("--once", action="store_true", help="one round, print the table, exit")
    sync.add_argument("--out", help="snapshot file to write (default: sync.snapshot)")
    sync.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    discover = sub.add_parser("discover", help="list the VPC's endpoints and cloud zones")
    discover.add_argument("--config", "-c", required=True, help="YAML config file")
    sub.add_parser("version", help="print the version")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(f"pldns {__version__}")
        return 0
    if args.command == "check":
        return _check(args.config)
    if args.command in ("sync", "discover"):
        return _cloud(args)
    return _serve(args.config, args.log_level)


def _cloud(args: argparse.Namespace) -> int:
    from pldns.discovery import run_discover
    from pldns.synccli import check_sync_config, run_sync, sinks_for

    _setup_logging(getattr(args, "log_level", "warning"))
    config = _load(args.config, upstreams=False)
    if config is None:
        return EXIT_CONFIG
    if args.command == "discover":
        return asyncio.run(run_discover(config))
    problem = check_sync_config(config)
    if problem:
        print(f"pldns: {args.config}: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    _install_loop()
    return asyncio.run(run_sync(config, args.once, sinks_for(config, args.out)))


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def _load(path: str, upstreams: bool = True) -> Config | None:
    try:
        config = load_config(path)
        if upstreams:
            upstream_addresses(config)
        return config
    except ConfigError as err:
        print(f"pldns: {path}: invalid config", file=sys.stderr)
        for problem in err.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def _check(path: str) -> int:
    config = _load(path)
    if config is None:
        return EXIT_CONFIG
    upstreams = upstream_addresses(config)
    print(f"config {path}: OK")
    print(f"  region     {config.region}")
    print(f"  listen     {', '.join(str(a) for a in config.listen)} (UDP and TCP)")
    print(f"  upstreams  {', '.join(str(u) for u in upstreams)}")
    print(f"  allow      {', '.join(config.allow)} (others: {config.deny})")
    print(f"  answers    ttl {config.answers.ttl}s, unknown names: {config.answers.when_unknown}")
    for service in config.services:
        ips = ", ".join(service.static) or f"none yet ({config.answers.when_unknown})"
        print(f"  service {service.name}: {ips}")
        for domain in service.domains:
            print(f"    {domain}")
    return 0


def _install_loop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _serve(path: str, level: str) -> int:
    _setup_logging(level)
    config = _load(path)
    if config is None:
        return EXIT_CONFIG
    _install_loop()
    return asyncio.run(_run(config))


async def _run(config: Config) -> int:
    from pldns.app import App

    app = App(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, app.request_stop)
    try:
        await app.run()
    except OSError as err:
        logging.getLogger("pldns").error("cannot listen: %s", err)
        return 1
    return 0

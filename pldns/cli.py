"""The `pldns` command: serve, check, sync, discover, status, version."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pldns import __version__, gctune, logs
from pldns.config import Config, load_config
from pldns.config.resolvconf import upstream_addresses
from pldns.config.schema import ConfigError

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pldns",
        description="DNS forwarding proxy answering cloud API names with PrivateLink IPs.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the DNS proxy")
    serve.add_argument("--config", "-c", required=True, help="YAML config file")
    serve.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="overrides log.level"
    )
    check = sub.add_parser("check", help="validate a config and show what would be served")
    check.add_argument("--config", "-c", required=True, help="YAML config file")
    check.add_argument(
        "--strict",
        action="store_true",
        help="warnings (placeholders, documentation addresses) are errors: exit 2",
    )
    sync = sub.add_parser("sync", help="run the PrivateLink sync alone and publish the snapshot")
    sync.add_argument("--config", "-c", required=True, help="YAML config file")
    sync.add_argument("--once", action="store_true", help="one round, print the table, exit")
    sync.add_argument("--out", help="snapshot file to write (default: sync.snapshot)")
    sync.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="overrides log.level"
    )
    sync.add_argument(
        "--configmap",
        metavar="NAMESPACE/NAME",
        help="also publish the snapshot into this ConfigMap (key snapshot.json)",
    )
    sync.add_argument(
        "--lease",
        metavar="NAMESPACE/NAME",
        help="sync only while holding this Lease (leader election; identity $POD_NAME or host)",
    )
    sync.add_argument("--kube-api", metavar="URL", help="API server (default: in-cluster)")
    sync.add_argument("--kube-token-file", metavar="PATH", help="bearer token file (default: SA)")
    discover = sub.add_parser("discover", help="list the VPC's endpoints and cloud zones")
    discover.add_argument("--config", "-c", required=True, help="YAML config file")
    discover.add_argument(
        "--log-level", default="warning", choices=["debug", "info", "warning", "error"]
    )
    status = sub.add_parser("status", help="show a running pldns's state (exit 1 if not ready)")
    status.add_argument("--url", help="HTTP endpoint, default from --config or 127.0.0.1:9153")
    status.add_argument("--config", "-c", help="take the HTTP address from this config")
    status.add_argument("--json", action="store_true", help="print the raw /status JSON")
    cache = sub.add_parser("cache", help="act on a running pldns's packet cache")
    cache.add_argument("action", choices=["flush"], help="flush: drop every cached answer")
    cache.add_argument("--url", help="HTTP endpoint, default from --config or 127.0.0.1:9153")
    cache.add_argument("--config", "-c", help="take the HTTP address from this config")
    sub.add_parser("version", help="print the version")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        from pldns.dns import load

        print(f"pldns {__version__} (data plane: {load()})")
        return 0
    if args.command == "check":
        return _check(args.config, args.strict)
    if args.command in ("sync", "discover"):
        return _cloud(args)
    if args.command == "status":
        return _status(args)
    if args.command == "cache":
        return _cache(args)
    return _serve(args.config, args.log_level)


def _cloud(args: argparse.Namespace) -> int:
    from pldns.sync.discovery import run_discover
    from pldns.synccli import check_sync_config, run_sync_command

    _setup_logging(getattr(args, "log_level", None) or "warning")
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
    return asyncio.run(run_sync_command(config, args))


def _status(args: argparse.Namespace) -> int:
    from pldns.status import status_command

    url = _ops_url(args)
    if url is None:
        return EXIT_CONFIG
    return status_command(url, args.json)


def _cache(args: argparse.Namespace) -> int:
    """`pldns cache flush`: POST /cache/flush; 0 done, 2 endpoint not reachable or refused."""
    import json
    import urllib.request

    url = _ops_url(args)
    if url is None:
        return EXIT_CONFIG
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    request = urllib.request.Request(f"{url}/cache/{args.action}", data=b"", method="POST")
    try:
        with opener.open(request, timeout=5.0) as resp:
            doc = json.loads(resp.read(65536))
    except (OSError, ValueError) as err:
        print(
            f"pldns cache {args.action}: {url}: {getattr(err, 'reason', None) or err}",
            file=sys.stderr,
        )
        return 2
    print(f"cache flushed: {doc.get('flushed', 0)} entries dropped")
    return 0


def _ops_url(args: argparse.Namespace) -> str | None:
    """The ops HTTP endpoint from --url, --config's http.listen, or the default."""
    url = args.url
    if not url and args.config:
        config = _load(args.config, upstreams=False)
        if config is None:
            return None
        if config.http.listen is None:
            print("pldns: http.listen is off in that config: no ops endpoint", file=sys.stderr)
            return None
        host, port = config.http.listen
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    url = url or "http://127.0.0.1:9153"
    if not url.startswith("http"):
        url = "http://" + url
    return url.rstrip("/")


def _setup_logging(level: str) -> None:
    logs.setup(level)


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


def _warnings(path: str) -> list[str]:
    """Placeholders and documentation addresses in the file (pldns/config/warnings.py)."""
    import yaml

    from pldns.config.warnings import config_warnings

    try:
        return config_warnings(yaml.safe_load(Path(path).read_text()))
    except (OSError, yaml.YAMLError):
        return []  # the loader has said what is wrong with the file


def _check(path: str, strict: bool = False) -> int:
    config = _load(path)
    if config is None:
        return EXIT_CONFIG
    warnings = _warnings(path)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if warnings and strict:
        print(f"pldns: {path}: {len(warnings)} warning(s), and --strict", file=sys.stderr)
        return EXIT_CONFIG
    upstreams = upstream_addresses(config)
    print(f"config {path}: OK")
    print(f"  region     {config.region}")
    print(f"  listen     {', '.join(str(a) for a in config.listen)} (UDP and TCP)")
    print(f"  upstreams  {', '.join(str(u) for u in upstreams)}")
    print(
        f"  allow      {', '.join(config.allow)} and the listen addresses (others: {config.deny})"
    )
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


def _serve(path: str, level: str | None) -> int:
    config = _load(path)
    if config is None:
        return EXIT_CONFIG
    logs.setup(level or config.log.level, config.log.format)
    for warning in _warnings(path):
        logging.getLogger("pldns").warning("config: %s", warning)
    _install_loop()
    return asyncio.run(_run(config, path))


async def _run(config: Config, path: str) -> int:
    from pldns.app import App, config_version
    from pldns.supervisor import Supervisor

    try:
        raw = Path(path).read_bytes()
    except OSError:
        raw = None
    from pldns.workers import PoolApp, PoolSupervisor, worker_count

    count = worker_count(config.workers)
    try:
        if count > 1:  # workers: N (see pldns/workers.py); 1 is the single process of old
            pool = PoolApp(config, count, config_path=path, version=config_version(config, raw))
            return await PoolSupervisor(pool).run()
        app = App(config, config_path=path, version=config_version(config, raw))
    except ConfigError as err:
        logging.getLogger("pldns").error("invalid config: %s", "; ".join(err.problems))
        return EXIT_CONFIG
    gctune.tune()
    return await Supervisor(app).run()

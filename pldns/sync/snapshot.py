"""The last-known-good snapshot: service addresses as versioned JSON, written atomically.

It holds addresses and their facts (zone, endpoint, ENI, status), never credentials. The
same file is what `pldns sync` publishes and what the `file` source follows.
"""

from __future__ import annotations

import ipaddress
import json
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from pldns.dns.table import Addresses

FORMAT = "pldns-snapshot"
VERSION = 1


class SnapshotError(Exception):
    """A snapshot that cannot be used (unreadable, not JSON, wrong format or version)."""


@dataclass(frozen=True)
class Snapshot:
    region: str
    services: Mapping[str, Addresses]
    generated_at: float

    @property
    def age(self) -> float:
        return max(0.0, time.time() - self.generated_at)

    @property
    def empty(self) -> bool:
        return not any(a.known for a in self.services.values())


class SnapshotSink(Protocol):
    """Where a syncer publishes snapshots: a local file, a Kubernetes ConfigMap, ..."""

    name: str

    async def publish(self, data: bytes) -> None: ...


class ReadableSink(SnapshotSink, Protocol):
    """A sink that can say what it holds now (so a new syncer starts from it)."""

    async def read(self) -> bytes | None: ...


def encode(snapshot: Snapshot) -> bytes:
    services: dict[str, Any] = {}
    for name, addrs in sorted(snapshot.services.items()):
        details = {d.get("ip", ""): d for d in addrs.detail}
        entries = []
        for ip in (*addrs.v4, *addrs.v6):
            entry = {"ip": ip}
            entry.update({k: v for k, v in details.get(ip, {}).items() if k != "ip" and v})
            entries.append(entry)
        services[name] = {"origin": addrs.origin, "addresses": entries}
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "generated_at": datetime.fromtimestamp(snapshot.generated_at, UTC).isoformat(),
        "region": snapshot.region,
        "services": services,
    }
    # Compact (no indentation): the ConfigMap holding it must stay far under etcd's 1 MiB at
    # a thousand endpoints; `jq .` shows it indented.
    return (json.dumps(doc, separators=(",", ":")) + "\n").encode()


def decode(raw: bytes, origin: str = "snapshot") -> Snapshot:
    """Parse and check a snapshot; SnapshotError says what is wrong with it."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise SnapshotError(f"not JSON: {err}") from err
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise SnapshotError(f"not a {FORMAT} document")
    if doc.get("version") != VERSION:
        raise SnapshotError(f"version {doc.get('version')!r} is not supported (want {VERSION})")
    try:
        generated = datetime.fromisoformat(doc["generated_at"]).timestamp()
        region = str(doc.get("region", ""))
        services: dict[str, Addresses] = {}
        for name, body in doc["services"].items():
            v4: list[str] = []
            v6: list[str] = []
            details = []
            for entry in body["addresses"]:
                ip = ipaddress.ip_address(entry["ip"])
                (v4 if ip.version == 4 else v6).append(str(ip))
                details.append({k: str(v) for k, v in entry.items()})
            services[str(name)] = Addresses(tuple(v4), tuple(v6), origin, tuple(details))
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise SnapshotError(f"malformed: {type(err).__name__}: {err}") from err
    return Snapshot(region=region, services=services, generated_at=generated)


def read(path: str | Path, origin: str = "snapshot") -> Snapshot:
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise SnapshotError(f"cannot read {path}: {err.strerror or err}") from err
    return decode(raw, origin)


def write_atomic(path: str | Path, data: bytes) -> None:
    """Temp file in the same directory, fsync, rename, fsync the directory: all or nothing."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class FileSink:
    """Publishes snapshots to a local file (atomic replace)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.name = f"file:{path}"

    async def publish(self, data: bytes) -> None:
        write_atomic(self.path, data)

    async def read(self) -> bytes | None:
        """What is published there now; None if nothing is."""
        try:
            return Path(self.path).read_bytes()
        except FileNotFoundError:
            return None

"""No AccessKey secret in any output, even from a malformed credentials file (issue #10).

The credentials library quotes the offending line of a file it cannot parse, and pldns used to
copy that text into its log and /status. Each malformed file here holds the secret on the line
the parser complains about (no section header, a line without a key) or quoted; `pldns sync
--once` and `pldns serve` run against the OpenAPI emulator with it, and every output is
searched for the secret: stdout, stderr (JSON log lines), the snapshot, /status, /metrics.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pldns import logs
from tests.emulator import OpenApiEmulator
from tests.test_sync_e2e import REGION, Pldns, config, fleet, wait_until

SECRET = "Zq8SuperSecretValue4711xY"
KEY_ID = "LTAI5tTestKeyIdForPldns"
MALFORMED = {
    "no-header": f"access_key_secret = {SECRET}\naccess_key_id = {KEY_ID}\n",
    "bad-key": f"[default]\ntype = access_key\naccess_key_id = {KEY_ID}\n{SECRET}\n",
    "quoted": f'[default]\ntype = access_key\naccess_key_id = {KEY_ID}\naccess_key_secret = "{SECRET}"\n',
}


@pytest.fixture
def emu() -> Iterator[OpenApiEmulator]:
    emulator = OpenApiEmulator(region=REGION).start()
    try:
        fleet(emulator)
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Pldns]:
    runner = Pldns(tmp_path)
    runner.secrets.append(SECRET)
    try:
        yield runner
    finally:
        runner.close()
    runner.check_no_secrets()  # every file the processes wrote: logs, snapshots


def credentials(tmp_path_factory: pytest.TempPathFactory, kind: str) -> Path:
    path = tmp_path_factory.mktemp("creds") / "credentials"  # outside the scanned tmp_path
    path.write_text(MALFORMED[kind])
    return path


def get(url: str) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=3) as resp:
            return resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.read().decode()


def synced(emu: OpenApiEmulator, creds: Path, **extra: Any) -> dict[str, Any]:
    cfg = config(emu, log={"format": "json", "level": "debug"}, **extra)
    cfg["privatelink"]["credentials"] = {"file": str(creds), "profile": "default"}
    return cfg


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_sync_once_with_a_malformed_credentials_file_never_shows_the_secret(
    kind: str, run: Pldns, emu: OpenApiEmulator, tmp_path_factory: pytest.TempPathFactory
) -> None:
    creds = credentials(tmp_path_factory, kind)
    path = run.write_config("once", synced(emu, creds))
    out = run.tmp / "once.json"
    rc, stdout, stderr = run.cli(
        "once", ["sync", "--once", "--config", str(path), "--out", str(out)], credentials=False
    )
    assert rc == 1, stderr
    assert "sync failed" in stderr
    for line in stderr.splitlines():  # log.format json is honoured by `pldns sync`
        if line.startswith("{"):
            assert json.loads(line)["logger"].startswith("pldns")
    assert any(line.startswith("{") for line in stderr.splitlines()), stderr
    assert SECRET not in stdout + stderr
    assert not out.exists() or SECRET not in out.read_text()


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_serve_with_a_malformed_credentials_file_never_shows_the_secret(
    kind: str, run: Pldns, emu: OpenApiEmulator, tmp_path_factory: pytest.TempPathFactory
) -> None:
    creds = credentials(tmp_path_factory, kind)
    snapshot = run.tmp / "state" / "snapshot.json"
    cfg = synced(emu, creds, sync={"snapshot": str(snapshot)})
    proc = run.serve("serve", cfg, credentials=False)
    base = f"http://{cfg['http']['listen']}"
    doc = wait_until(
        lambda: (d := json.loads(get(base + "/status")))["sync"]["last_error"] and d,
        20,
        "a failed round",
    )
    metrics = get(base + "/metrics")
    ready = get(base + "/readyz")
    proc.stop()
    outputs = {
        "status": json.dumps(doc),
        "metrics": metrics,
        "readyz": ready,
        "log": proc.log(),
        "snapshot": snapshot.read_text() if snapshot.exists() else "",
    }
    leaked = [name for name, text in outputs.items() if SECRET in text]
    assert not leaked, {name: outputs[name][:2000] for name in leaked}
    assert doc["sync"]["failures"], doc["sync"]


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_redaction_learns_every_value_of_a_malformed_file(
    kind: str, tmp_path_factory: pytest.TempPathFactory, caplog: Any
) -> None:
    creds = credentials(tmp_path_factory, kind)
    logs.learn_credentials(str(creds))
    line = MALFORMED[kind].splitlines()[-1 if kind != "no-header" else 0]
    text = f"File contains no section headers.\nline: 1\n{line!r}"
    assert SECRET not in logs.redact(text) and "***" in logs.redact(text)
    record = logging.LogRecord("pldns.sync", logging.ERROR, "", 0, "failed: %s", (text,), None)
    logs.Redact().filter(record)
    assert SECRET not in record.getMessage()


def test_common_words_in_a_credentials_file_are_not_redacted(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    path = tmp_path_factory.mktemp("creds") / "credentials"
    path.write_text("[default]\ntype = access_key\nregion_id = cn-hangzhou\n")
    logs.learn_credentials(str(path))
    assert logs.redact("type access_key in cn-hangzhou") == "type access_key in cn-hangzhou"

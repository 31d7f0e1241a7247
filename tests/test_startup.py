"""Start-up: with a snapshot on disk, pldns is answering owned names before the cloud SDK is
even imported; the SDK is imported (and its client built) in a thread, off the event loop,
once the listeners are bound.

Run in a fresh interpreter (the test process may have imported the SDK already). No timing
is asserted: the figures are measured and stated in the README (see "Start and memory").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from pldns.dns.table import Addresses
from pldns.sync.snapshot import Snapshot, encode, write_atomic
from tests.fakes.proc import REPO, free_port

SCRIPT = textwrap.dedent(
    """
    import asyncio, json, socket, sys, threading
    import dns.message, dns.asyncquery
    from pldns.app import App
    from pldns.config import load_config

    SDK = "alibabacloud_privatelink20200415"
    imported_on = []

    class Spy:  # records the thread that first imports the SDK
        def find_spec(self, name, path=None, target=None):
            if name == SDK and not imported_on:
                imported_on.append(threading.current_thread().name)
            return None

    sys.meta_path.insert(0, Spy())

    async def main():
        app = App(load_config(sys.argv[1]))
        await app.start()
        port = app.config.listen[0].port
        q = dns.message.make_query("eci-vpc.cn-hangzhou.aliyuncs.com", "A")
        # Listeners bound, the snapshot's table served, and not one SDK module loaded yet.
        before = SDK in sys.modules or bool(imported_on)
        r = await dns.asyncquery.udp(q, "127.0.0.1", port=port, timeout=5)
        ips = sorted(rd.to_text() for rrset in r.answer for rd in rrset)
        for _ in range(400):  # the first sync round: imports the SDK, fails (nothing listens)
            if app.sync_state.attempts and app.sync_state.last_error:
                break
            await asyncio.sleep(0.05)
        await app.stop(0)
        print(json.dumps({"sdk_at_start": before,
                          "ips": ips, "imported_on": imported_on,
                          "error": app.sync_state.last_error}))

    asyncio.run(main())
    """
)


def test_owned_names_answer_before_the_sdk_is_imported(tmp_path: Path) -> None:
    snap = tmp_path / "snap.json"
    services = {"eci": Addresses(("10.1.1.1",), origin="privatelink")}
    write_atomic(snap, encode(Snapshot("cn-hangzhou", services, time.time())))
    dead = free_port()  # nothing listens: the round fails fast, locally
    config = tmp_path / "pldns.yaml"
    config.write_text(
        json.dumps(
            {
                "region": "cn-hangzhou",
                "listen": [f"127.0.0.1:{free_port()}"],
                "upstreams": [f"127.0.0.1:{dead}"],
                "http": {"listen": "off"},
                "sync": {"source": "privatelink", "interval": 60, "snapshot": str(snap)},
                "privatelink": {
                    "vpc_id": "vpc-test",
                    "endpoint": f"127.0.0.1:{dead}",
                    "protocol": "http",
                    "connect_timeout": 1,
                    "read_timeout": 1,
                },
                "services": {"eci": {"domains": ["eci-vpc.{region}.aliyuncs.com"]}},
            }
        )
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "ALIBABA_CLOUD_ACCESS_KEY_ID": "test-id",
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "test-secret",
        "ALIBABA_CLOUD_ECS_METADATA_DISABLED": "true",
    }
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["sdk_at_start"] is False
    assert result["ips"] == ["10.1.1.1"]
    # The first round did import it, and not on the event loop's thread.
    assert result["imported_on"] and result["imported_on"][0] != "MainThread"
    assert result["error"], "the sync round should have run (and failed: nothing listens)"

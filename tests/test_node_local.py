"""Node-local mode answers the node itself: `dig @169.254.20.53` on the node, in a private
network namespace (`unshare --net`) with 169.254.20.53 on its loopback, as the shipped
node-local config listens."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent

# Runs inside the namespace: puts the addresses on lo, starts `pldns serve` for each config,
# queries it from the given source addresses, prints {config: {source: rcode and answers}}.
INNER = r"""
import json, subprocess, sys, time
import dns.message, dns.query, dns.rcode

subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
for extra in ("169.254.20.53/32", "169.254.7.7/32", "192.0.2.9/32"):
    subprocess.run(["ip", "addr", "add", extra, "dev", "lo"], check=True)
plan = json.loads(sys.argv[1])
out = {}
for name, (config, port, sources) in plan.items():
    proc = subprocess.Popen([sys.executable, "-m", "pldns", "serve", "--config", config],
                            stdout=subprocess.DEVNULL, stderr=open(config + ".log", "w"))
    try:
        query = dns.message.make_query("eci-vpc.cn-hangzhou.aliyuncs.com", "A")
        deadline = time.monotonic() + 60
        while True:  # until it answers (to anyone: REFUSED counts as up)
            try:
                dns.query.udp(query, "169.254.20.53", port=port, timeout=0.5)
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(open(config + ".log").read())
                time.sleep(0.1)
        got = {}
        for source in sources:
            kwargs = {} if source == "node" else {"source": source}
            reply = dns.query.udp(query, "169.254.20.53", port=port, timeout=3, **kwargs)
            got[source] = [dns.rcode.to_text(reply.rcode()),
                           sorted(rr.address for rrset in reply.answer for rr in rrset)]
        out[name] = got
    finally:
        proc.terminate()
        proc.wait(timeout=20)
print(json.dumps(out))
"""


def _config(tmp: Path, name: str, port: int, allow: list[str] | None) -> str:
    """The shipped node-local config, with static addresses instead of the ConfigMap file and
    an upstream that is never asked (only owned names are queried)."""
    config = yaml.safe_load((REPO / "config" / "node-local.yaml").read_text())
    assert config["listen"] == ["169.254.20.53:53"]
    config["listen"] = [f"169.254.20.53:{port}"]
    config["upstreams"] = ["127.0.0.1:5399"]
    config.pop("sync", None)
    config["http"] = {"listen": "off"}
    config["lifecycle"] = {"lame_duck": 0, "drain": 1}
    config["services"]["eci"]["static"] = ["192.168.10.5"]
    if allow is not None:
        config["allow"] = allow
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_node_local_answers_the_node_itself(tmp_path: Path) -> None:
    if not shutil.which("unshare") or not shutil.which("ip"):
        pytest.skip("needs unshare and ip (util-linux, iproute2)")
    ns = ["unshare", "--net"] if os.geteuid() == 0 else ["unshare", "--net", "--map-root-user"]
    if subprocess.run([*ns, "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot create a network namespace here")
    plan = {
        # the shipped config: default allow
        "shipped": [_config(tmp_path, "shipped", 53, None), 53, ["node", "127.0.0.1", "169.254.7.7", "192.0.2.9"]],
        # an allow list that has none of the node's addresses: its own listen address still gets
        # answers, every other source is refused
        "narrow": [_config(tmp_path, "narrow", 5353, ["10.0.0.0/8"]), 5353, ["node", "127.0.0.1", "169.254.7.7"]],
    }  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [*ns, sys.executable, "-c", INNER, json.dumps(plan)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    got = json.loads(done.stdout)
    answer = ["NOERROR", ["192.168.10.5"]]
    assert got["shipped"] == {
        "node": answer,  # from 169.254.20.53 itself: what `dig @169.254.20.53` on the node sends
        "127.0.0.1": answer,
        "169.254.7.7": answer,  # link-local is in the default allow
        "192.0.2.9": ["REFUSED", []],  # not in the default allow
    }
    assert got["narrow"] == {
        "node": answer,
        "127.0.0.1": ["REFUSED", []],
        "169.254.7.7": ["REFUSED", []],
    }

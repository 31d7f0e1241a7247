"""The benchmark in bench/ is complete in the repository: its scripts parse, its data generator
runs, and the candidate wrapper writes a config that pldns accepts. (The load run itself needs
dnsperf/knotd and minutes of CPU: `bench/run.sh`, not a test.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pldns.config.load import load_config

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"


def test_every_file_the_harness_needs_is_in_the_repository() -> None:
    for name in ("run.sh", "bench.py", "gen_data.py", "compare.py", "microbench.py"):
        assert (BENCH / name).is_file(), name
    assert (BENCH / "peers" / "pybase.py").is_file()
    text = (BENCH / "run.sh").read_text()
    assert "shared/bench" not in text  # nothing outside the clone
    assert "apt-get install" in text  # the one command installs what it needs
    for script in ("run.sh", "profile.sh"):
        subprocess.run(["bash", "-n", str(BENCH / script)], check=True)


def test_generated_data_and_the_candidate_config_load(tmp_path: Path) -> None:
    data = tmp_path / "data"
    subprocess.run(
        [
            sys.executable,
            str(BENCH / "gen_data.py"),
            "--outdir",
            str(data),
            "--records",
            "50",
            "--lines",
            "100",
            "--miss-lines",
            "100",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    synth = json.loads((data / "synth.json").read_text())
    assert synth and all(ips for ips in synth.values())
    for name in ("q-synth.txt", "q-pass.txt", "q-mix.txt", "q-miss-main.txt", "example.test.zone"):
        assert (data / name).stat().st_size > 0, name

    out = tmp_path / "pldns.yaml"
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH / "pldns-candidate.py"),
            "--synth-json",
            str(data / "synth.json"),
            "--upstream",
            "127.0.0.1:5300",
            "--listen",
            "127.0.0.1:5305",
            "--config-out",
            str(out),
            "--dry-run",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.split()[1:] == ["serve", "--config", str(out)]
    config = load_config(str(out))
    owned = {d for s in config.services for d in s.domains}
    assert owned == {name.rstrip(".") for name in synth}

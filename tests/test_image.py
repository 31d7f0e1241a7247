"""The container image, run for real. `scripts/build-image.sh` builds it (a CI step: it fetches
from the Debian mirror and PyPI); this file only runs what was built, with podman, offline:

- as the Dockerfile's non-root USER, with a read-only root filesystem (as the Kubernetes
  manifests ask) and in a network namespace of its own, the query coming from outside the
  container over that namespace's loopback: `pldns serve` with the demo config, then
  `pldns version`, `pldns check` on every config under /etc/pldns and the cloud SDK imports;
- what the image holds: no compiler, no pip or pip cache, no wheel, no test file, no secret,
  and a bounded size (`python3 -m tests.test_image` prints its largest entries);
- that the Dockerfile, the build script and the manifests name the same image.

Skipped, with the reason, where podman is missing, the user is not root, or the image has not
been built (or was built from other sources than these); under CI or PLDNS_REQUIRE_TOOLS
(.ci/run builds the image first) each of those is a failure instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pldns import __version__
from pldns.config import load_config
from tests.fakes.proc import REPO
from tests.tools import REQUIRE_ENV, required

# What scripts/build-image.sh tags; PLDNS_IMAGE runs the tests on another build (e.g. --tag).
IMAGE = os.environ.get("PLDNS_IMAGE", f"localhost/pldns:{__version__}")
DEMO = "/etc/pldns/demo.yaml"
STORAGE = ["--storage-driver", os.environ.get("STORAGE_DRIVER", "vfs")]
# runc and the cgroupfs manager work on cgroup v1, hybrid and v2 without systemd (crun refuses
# hybrid). Explicit rlimits: the defaults (nofile 1048576) need CAP_SYS_RESOURCE to set.
PODMAN = ["podman", *STORAGE, "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
LIMITS = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
BUILD = "scripts/build-image.sh"
VENV = "/opt/pldns"
MAX_VENV_MB = 72  # ~65 MB stripped: the cloud SDK, cryptography and netaddr are most of it; the
# compiled data plane (Dockerfile COMPILE=1) adds ~2 MB


def run(cmd: list[str], timeout: float = 120, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload,no-any-return]


def dockerfile_user() -> str:
    users = re.findall(r"^USER\s+(\S+)", (REPO / "Dockerfile").read_text(), re.M)
    assert users, "the Dockerfile sets no USER"
    return str(users[-1])


def source_files() -> dict[str, bytes]:
    """What the image must hold, relative to its root: the package and the two configs."""
    files = {
        "etc/pldns/pldns.yaml": (REPO / "deploy/container/pldns.yaml").read_bytes(),
        DEMO.lstrip("/"): (REPO / "config/pldns.yaml").read_bytes(),
    }
    for path in sorted((REPO / "pldns").rglob("*.py")):
        rel = path.relative_to(REPO)
        files[f"opt/pldns/lib/python3.11/site-packages/{rel}"] = path.read_bytes()
    return files


def _unavailable() -> str | None:
    if shutil.which("podman") is None:
        return f"podman is not installed: run `{BUILD} --install-tools` as root"
    if os.geteuid() != 0:
        return "the image tests use rootful podman: run them as root"
    if run(["podman", *STORAGE, "image", "exists", IMAGE], timeout=60).returncode != 0:
        return f"no image {IMAGE} in the {STORAGE[1]} storage: build it with {BUILD}"
    return None


def _skip(reason: str) -> None:
    if required() or os.environ.get("CI"):
        pytest.fail(f"{reason} (CI or {REQUIRE_ENV} is set: an error, not a skip)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def image_root() -> Iterator[Path]:
    """The image's file tree, mounted (nothing here writes to it)."""
    reason = _unavailable()
    if reason:
        _skip(reason)
    mounted = run(["podman", *STORAGE, "image", "mount", IMAGE], timeout=120)
    assert mounted.returncode == 0, mounted.stderr
    root = Path(mounted.stdout.strip())
    try:
        stale = [rel for rel, data in source_files().items() if _read(root / rel) != data]
        if stale:
            _skip(f"{IMAGE} was built from other sources ({stale[0]} differs): rerun {BUILD}")
        yield root
    finally:
        run(["podman", *STORAGE, "image", "unmount", IMAGE], timeout=120)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


# -- the image's configuration ------------------------------------------------------------


def test_image_config(image_root: Path) -> None:
    done = run(["podman", *STORAGE, "image", "inspect", IMAGE])
    assert done.returncode == 0, done.stderr
    config = json.loads(done.stdout)[0]["Config"]
    user = dockerfile_user()
    assert config["User"] == user and not user.startswith("0"), (config["User"], user)
    assert config["Entrypoint"] == ["pldns"]
    assert config["Cmd"] == ["serve", "--config", "/etc/pldns/pldns.yaml"]
    assert {"1053/udp", "1053/tcp", "9153/tcp"} <= set(config["ExposedPorts"])
    assert config["Labels"]["org.opencontainers.image.version"] == __version__
    for entry in config.get("Env", []):
        name = entry.split("=", 1)[0]
        assert not re.search(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY|CERT|CA_BUNDLE", name), entry


# -- what the image holds -------------------------------------------------------------------

TOOLCHAIN = re.compile(
    r"(.*-)?(gcc|g\+\+|c\+\+|cc|cpp|clang(\+\+)?|tcc|ld(\.(bfd|gold|lld))?|as|strip|rustc|cargo|go|make)"
    r"(-\d+(\.\d+)*)?"
)  # not ld.so, the dynamic loader
BUILD_PACKAGES = re.compile(
    r"(gcc(-\d+)?|g\+\+.*|cpp(-\d+)?|binutils.*|build-essential|libc6-dev|make|clang.*)"
)
# A key block with its base64 body (libraries quote the bare header in their parsers).
PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----\s+[A-Za-z0-9+/=]{40,}")
# An AccessKey ID (LTAI...), or a secret assigned in a file (the SDK's own code names the
# variable, with no value).
ACCESS_KEY = re.compile(
    rb"\bLTAI[0-9A-Za-z]{12,30}\b|^\s*(export\s+)?\w*ACCESS_KEY_SECRET\s*[=:]\s*['\"]?[0-9A-Za-z]{20,}",
    re.M,
)
SECRET_NAMES = re.compile(
    r"(\.env|credentials(\.(json|ini|yaml|yml|env|txt))?|id_(rsa|ed25519|ecdsa)|.*\.key|\.netrc|\.pypirc|\.dockercfg|config\.json)"
)
# The pip and setuptools wheels of the base's ensurepip (Debian's python3-venv keeps them in
# /usr/share/python-wheels, a CPython in /usr/local in ensurepip/_bundled): part of the base.
BASE_WHEELS = re.compile(
    r"/usr/share/python-wheels/|/usr/(local/)?lib/python3\.\d+/ensurepip/_bundled/"
)


def walk(root: Path) -> Iterator[tuple[str, Path]]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in [*dirnames, *sorted(filenames)]:
            path = Path(dirpath) / name
            yield "/" + str(path.relative_to(root)), path


def test_no_compiler_in_the_image(image_root: Path) -> None:
    found = [
        rel
        for rel, path in walk(image_root)
        if re.match(r"/(usr/)?(local/)?s?bin/", rel)
        and TOOLCHAIN.fullmatch(path.name)
        and not path.is_dir()
    ]
    assert not found, found
    status = (image_root / "var/lib/dpkg/status").read_text()
    installed = re.findall(r"^Package: (\S+)\nStatus: install ok installed", status, re.M)
    assert "python3.11-minimal" in installed or "libc6" in installed, installed[:5]
    assert not [p for p in installed if BUILD_PACKAGES.fullmatch(p)]


def test_no_pip_wheels_cache_or_tests_in_the_image(image_root: Path) -> None:
    site = image_root / VENV.lstrip("/") / "lib/python3.11/site-packages"
    assert (site / "pldns/cli.py").is_file()
    packaging = [p.name for p in site.iterdir() if re.match(r"(pip|setuptools|wheel)\b", p.name)]
    assert not packaging, packaging
    assert not [
        p.name for p in (image_root / VENV.lstrip("/") / "bin").iterdir() if "pip" in p.name
    ]
    ours = [p.name for p in (REPO / "tests").glob("test_*.py")]
    assert "test_image.py" in ours
    bad = []
    for rel, path in walk(image_root):
        if rel.startswith(("/proc/", "/sys/", "/dev/")):
            continue
        if path.name.endswith(".whl") and not BASE_WHEELS.match(rel):
            bad.append(rel)
        if rel in ("/wheels", "/src", "/opt/build", "/tests") or path.name == ".cache":
            bad.append(rel)
        # test suites (ours by name; dependencies' tests/ directories), not library modules
        # such as aiohttp/test_utils.py
        if path.name in ("tests", "test", "conftest.py", *ours) and rel.startswith(VENV + "/"):
            bad.append(rel)
    assert not bad, bad
    # the build's pip.conf and CA bundle (bind-mounted over /root) left nothing behind
    assert not (image_root / "root/.config").exists()


def test_no_secret_in_the_image(image_root: Path) -> None:
    found = []
    for rel, path in walk(image_root):
        if not path.is_file() or path.is_symlink() or rel.startswith("/usr/share/ca-certificates"):
            continue
        if SECRET_NAMES.fullmatch(path.name) and not rel.startswith("/usr/"):
            found.append(rel)
        if (
            rel.startswith(("/etc/", "/opt/", "/root/", "/home/", "/var/"))
            and path.stat().st_size < 1 << 20
        ):
            data = path.read_bytes()
            if PRIVATE_KEY.search(data) or re.search(rb"ACCESS_KEY_SECRET\s*[=:]\s*\S{8,}", data):
                found.append(rel)
    assert not found, found


def test_image_size_is_bounded(image_root: Path) -> None:
    venv = sum(p.stat().st_size for _, p in walk(image_root / VENV.lstrip("/")) if p.is_file())
    assert venv < MAX_VENV_MB << 20, f"{VENV} holds {venv >> 20} MB"


# -- the image, running -----------------------------------------------------------------------

QUERY = """
import json, sys, dns.message, dns.query, dns.rdatatype
name, tcp = sys.argv[1], sys.argv[2] == "tcp"
q = dns.message.make_query(name, "A")
r = (dns.query.tcp if tcp else dns.query.udp)(q, "127.0.0.1", port=1053, timeout=2)
print(json.dumps({"rcode": r.rcode(), "ips": sorted(a.address for s in r.answer for a in s)}))
"""


class Served:
    def __init__(self, name: str, netns: str) -> None:
        self.name, self.netns = name, netns

    def query(self, name: str, tcp: bool = False) -> dict[str, object] | None:
        done = run(
            ["ip", "netns", "exec", self.netns, sys.executable, "-c", QUERY, name,
             "tcp" if tcp else "udp"],
            timeout=30,
        )  # fmt: skip
        return json.loads(done.stdout) if done.returncode == 0 else None

    def exec(self, *cmd: str) -> subprocess.CompletedProcess[str]:
        return run([*PODMAN, "exec", self.name, *cmd], timeout=120)

    def pid(self) -> int:
        done = run([*PODMAN, "inspect", self.name, "--format", "{{.State.Pid}}"])
        return int(done.stdout.strip())


@pytest.fixture(scope="module")
def served(image_root: Path) -> Iterator[Served]:
    """`pldns serve` with the demo config in a container: the Dockerfile's USER, read-only
    root (no tmpfs either, as readOnlyRootFilesystem), a network namespace made here."""
    name = f"pldns-test-{os.getpid()}"
    netns = name
    added = run(["ip", "netns", "add", netns])
    assert added.returncode == 0, added.stderr
    try:
        assert run(["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"]).returncode == 0
        started = run(
            [*PODMAN, "run", "--detach", "--name", name, *LIMITS, "--read-only",
             "--read-only-tmpfs=false", "--user", dockerfile_user(),
             "--network", f"ns:/run/netns/{netns}", IMAGE, "serve", "--config", DEMO],
            timeout=300,
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        server = Served(name, netns)
        owned = next(iter(load_config(REPO / "config/pldns.yaml").services)).domains[0]
        deadline = time.monotonic() + 120
        while server.query(owned) is None:
            state = run([*PODMAN, "inspect", name, "--format", "{{.State.Status}}"]).stdout
            logs = run([*PODMAN, "logs", name]).stderr
            assert "running" in state, f"{state}\n{logs}"
            assert time.monotonic() < deadline, f"no answer within 120 s\n{logs}"
            time.sleep(1)
        yield server
    finally:
        run([*PODMAN, "rm", "--force", "--time", "5", name], timeout=120)
        run(["ip", "netns", "delete", netns])


def test_serve_answers_from_outside_the_container(served: Served) -> None:
    config = load_config(REPO / "config/pldns.yaml")
    for service in config.services:
        expected = sorted(service.static_v4)
        assert expected, service.name
        for tcp in (False, True):
            assert served.query(service.domains[0], tcp) == {"rcode": 0, "ips": expected}


def test_serve_runs_unprivileged_on_a_read_only_root(served: Served) -> None:
    status = Path(f"/proc/{served.pid()}/status").read_text()
    uid, gid = dockerfile_user().split(":")
    assert re.search(rf"^Uid:\s+{uid}\s+{uid}\s+{uid}\s+{uid}$", status, re.M), status
    assert re.search(rf"^Gid:\s+{gid}\s", status, re.M), status
    assert re.search(r"^CapEff:\s+0+$", status, re.M), status
    root = [ln.split() for ln in Path(f"/proc/{served.pid()}/mountinfo").read_text().splitlines()]
    assert any(f[4] == "/" and "ro" in f[5].split(",") for f in root), root
    for path in ("/etc/pldns/probe", "/tmp/probe", f"{VENV}/probe"):
        done = served.exec("python3", "-c", f"open({path!r}, 'w')")
        assert done.returncode != 0 and "Read-only file system" in done.stderr, (path, done)


def test_version_check_and_imports_in_the_image(served: Served, image_root: Path) -> None:
    version = served.exec("pldns", "version")
    # the image's build compiles the data plane (Dockerfile, COMPILE=1)
    assert version.stdout == f"pldns {__version__} (data plane: compiled)\n", version
    configs = sorted(
        "/" + str(p.relative_to(image_root)) for p in (image_root / "etc/pldns").rglob("*.yaml")
    )
    assert {"/etc/pldns/pldns.yaml", DEMO} <= set(configs), configs
    for config in configs:
        done = served.exec("pldns", "check", "--config", config)
        assert done.returncode == 0, f"{config}:\n{done.stdout}{done.stderr}"
    code = (
        "import pldns, pldns.sync.kube, pldns.sync.lease, pldns.sync.privatelink, pldns.synccli;"
        "import alibabacloud_privatelink20200415.client, alibabacloud_credentials.client, uvloop;"
        "print(pldns.__file__)"
    )
    done = served.exec("python3", "-c", code)
    assert done.returncode == 0 and done.stdout.startswith(VENV + "/"), done
    assert served.exec("ip", "-V").returncode == 0  # iproute2, for the DaemonSet's init container


def test_sigterm_stops_it_cleanly(served: Served) -> None:
    """PID 1 in the container: SIGTERM (what the kubelet sends) ends it, exit code 0, in time."""
    started = time.monotonic()
    done = run([*PODMAN, "stop", "--time", "30", served.name], timeout=120)
    assert done.returncode == 0, done.stderr
    code = run([*PODMAN, "inspect", served.name, "--format", "{{.State.ExitCode}}"]).stdout
    assert code.strip() == "0", (code, run([*PODMAN, "logs", served.name]).stderr[-2000:])
    assert time.monotonic() - started < 30  # not the SIGKILL after --time


# -- one image name everywhere ------------------------------------------------------------------


def test_the_image_is_named_alike_everywhere() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(rf"^ARG VERSION={re.escape(__version__)}$", dockerfile, re.M)
    assert "localhost/pldns:$version" in (REPO / BUILD).read_text()
    kube = REPO / "deploy/kubernetes"
    images = set()
    for path in kube.rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "Kustomization":
                for image in doc.get("images", []):
                    assert image == {"name": "pldns", "newName": "pldns", "newTag": __version__}, (
                        path
                    )
            images.update(re.findall(r"^\s+image: (\S+)$", path.read_text(), re.M))
    assert images == {f"pldns:{__version__}"}, images


# -- `python3 -m tests.test_image`: the file list's largest entries ------------------------------


def report(root: Path, top: int = 20) -> str:
    """Sizes by top-level directory, by package in the venv, and the largest files."""
    files = [(rel, p.stat().st_size) for rel, p in walk(root) if p.is_file() and not p.is_symlink()]
    tops: dict[str, int] = {}
    packages: dict[str, int] = {}
    site = VENV + "/lib/python3.11/site-packages/"
    for rel, size in files:
        tops["/" + rel.split("/")[1]] = tops.get("/" + rel.split("/")[1], 0) + size
        if rel.startswith(site):
            name = rel[len(site) :].split("/")[0]
            packages[name] = packages.get(name, 0) + size

    def ranked(sizes: dict[str, int] | list[tuple[str, int]], n: int) -> list[str]:
        items = sizes.items() if isinstance(sizes, dict) else sizes
        return [
            f"{size >> 10:>8} KiB  {rel}" for rel, size in sorted(items, key=lambda kv: -kv[1])[:n]
        ]

    total = sum(size for _, size in files)
    return "\n".join(
        [f"{total >> 10:>8} KiB  in {len(files)} files", *ranked(tops, 8),
         f"{site}:", *ranked(packages, 12), "largest files:", *ranked(files, top)]
    )  # fmt: skip


if __name__ == "__main__":
    mounted = run(["podman", *STORAGE, "image", "mount", IMAGE], timeout=120)
    if mounted.returncode != 0:
        sys.exit(mounted.stderr)
    try:
        print(report(Path(mounted.stdout.strip())))
    finally:
        run(["podman", *STORAGE, "image", "unmount", IMAGE], timeout=120)

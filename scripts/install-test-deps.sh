#!/usr/bin/env bash
# Install what the test suite needs on a fresh Debian 12 / Ubuntu 24.04 machine (run as root):
#   - the DNS tools and peers the tests run for real (Debian packages);
#   - .venv/ with pldns and its test extras (scripts/venv.sh: the distribution's Python is
#     PEP 668 "externally managed", so nothing is installed into it);
#   - .wheelhouse/: wheels of pldns's dependencies and of its build backend, so that the tests
#     that install pldns into a brand-new venv do it offline (--no-index). This script is the
#     only step that uses the network (Debian mirror, PyPI); the tests use loopback only.
# Then: .venv/bin/python -m pytest -q
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(bind9-dnsutils knot-dnsutils knot unbound dnsmasq-base iproute2 util-linux systemd
          python3 python3-venv gcc libc6-dev python3-dev)  # a compiler: scripts/test-compiled.sh
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/install-test-deps.sh: missing Debian packages; run as root, or first:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

bash scripts/venv.sh test

# The wheelhouse for the offline install tests (tests/test_install.py, tests/test_deploy.py):
# every runtime dependency (built for this Python) and setuptools/wheel for building pldns.
# The same for the distribution's Python when it is another minor version (those tests use it
# as the "externally managed" interpreter).
pips=(.venv/bin/python)
if [ -x /usr/bin/python3 ] && [ "$(/usr/bin/python3 -c 'import sys; print(sys.version_info[:2])')" \
     != "$(.venv/bin/python -c 'import sys; print(sys.version_info[:2])')" ] \
   && /usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null; then
  tmpvenv="$(mktemp -d)"
  trap 'rm -rf "$tmpvenv"' EXIT
  /usr/bin/python3 -m venv "$tmpvenv/venv"
  pips+=("$tmpvenv/venv/bin/python")
fi
for py in "${pips[@]}"; do
  "$py" -m pip wheel -q --disable-pip-version-check --wheel-dir .wheelhouse \
    "setuptools>=68" wheel .
done
rm -f .wheelhouse/pldns-*.whl  # the tests build pldns itself from the source under test

if [ -x .ci/deploy-deps.sh ]; then
  PYTHON=.venv/bin/python bash .ci/deploy-deps.sh
fi

#!/usr/bin/env bash
# Make (or update) the project's own virtual environment, .venv/, with pldns installed from
# this clone (editable), and optionally extras:
#
#   scripts/venv.sh            # pldns and its dependencies: .venv/bin/pldns
#   scripts/venv.sh test       # also the test extras (pytest, dnspython, ruff, mypy, ...)
#
# Works with the distribution's Python (Debian 12, Ubuntu 24.04: PEP 668 forbids `pip install`
# into it, a venv is the supported way) and with a pyenv or any other Python >= 3.11 alike.
# PYTHON=/path/to/python3 picks the interpreter (default: python3 on PATH). When that Python
# lacks the venv module (Debian/Ubuntu ship it as python3-venv), it is installed with apt-get
# when run as root; otherwise the command to run is printed.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="${1:-}"
python="${PYTHON:-python3}"
if ! command -v "$python" >/dev/null 2>&1; then
  echo "scripts/venv.sh: no $python on PATH; install Python 3.11 or later (apt-get install python3)" >&2
  exit 1
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "scripts/venv.sh: $("$python" -V 2>&1) is too old: pldns needs Python 3.11 or later" \
    "(set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi

# A venv that works: its python runs and has pip. Otherwise (re)create it.
if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  if ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    pkg=python3-venv
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "scripts/venv.sh: $python has no venv module; installing $pkg" >&2
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null
    else
      echo "scripts/venv.sh: $python has no venv module; install it first:" >&2
      echo "  sudo apt-get install -y $pkg" >&2
      exit 1
    fi
  fi
  rm -rf .venv
  "$python" -m venv .venv
fi

target="."
[ -z "$extras" ] || target=".[$extras]"
.venv/bin/python -m pip install -q --disable-pip-version-check -e "$target"
echo "scripts/venv.sh: .venv is ready ($(.venv/bin/python -V), $(.venv/bin/pldns version))" >&2

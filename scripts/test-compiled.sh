#!/usr/bin/env bash
# Run the tests against the data plane compiled with mypyc (the modules in pldns.dns.COMPILED),
# the build `PLDNS_COMPILE=1` makes for production (see the README, "Compiled data plane"):
#
#   scripts/test-compiled.sh                  # the suite, less the packaging tests
#   scripts/test-compiled.sh tests/test_wire.py -x   # any pytest arguments instead
#
# The clone's files are copied to a temporary directory and compiled there in place, so no
# extension module is ever left next to the sources of the clone (one would shadow later edits
# of its .py file). Needs a C compiler and the Python headers (Debian: gcc, python3-dev) and
# mypy in the test venv (scripts/install-test-deps.sh installs all three).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
[[ "$python" != */* ]] || python="$(realpath -s "$python")"  # -s: a venv's python is a symlink
root="$PWD"
work="$(mktemp -d /tmp/pldns-compiled.XXXXXX)"
trap 'rm -rf "$work"' EXIT

git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
  [ -e "$f" ] && printf '%s\0' "$f"
done | xargs -0 cp --parents -t "$work"
[ -d .wheelhouse ] && ln -s "$root/.wheelhouse" "$work/.wheelhouse"

cd "$work"
echo "scripts/test-compiled.sh: compiling pldns.dns with mypyc in $work" >&2
if ! PLDNS_COMPILE=1 "$python" setup.py build_ext --inplace >build.log 2>&1; then
  tail -40 build.log >&2
  echo "scripts/test-compiled.sh: the mypyc build failed (log above)" >&2
  exit 1
fi
# Every module meant to be compiled is loaded compiled, or the run would test the pure source.
"$python" - <<'PY'
import pldns.dns as dp

if dp.load() != "compiled":
    raise SystemExit(f"scripts/test-compiled.sh: not compiled: {sorted(set(dp.COMPILED) - set(dp.compiled()))}")
print(f"scripts/test-compiled.sh: {len(dp.compiled())} modules compiled")
PY
if [ "$#" -eq 0 ]; then
  # The packaging tests build and install pldns from source: they test the pure install.
  set -- -q --ignore=tests/test_image.py --ignore=tests/test_install.py \
    --ignore=tests/test_deploy.py
fi
"$python" -m pytest -p no:cacheprovider "$@"

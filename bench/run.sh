#!/usr/bin/env bash
# The pldns benchmark, from a clone, in one command. See bench/README.md.
#
#   bench/run.sh                                  # pldns + dnsdist, unbound-nc, dnsmasq-nc, py-uvloop-raw
#                                                 #   x synth, pass, mix, miss, 10 s each (~8 min)
#   bench/run.sh --peers dnsdist --workloads synth,miss --duration 3 --lat-qps 0   # a quick look
#   bench/run.sh --python /path/to/venv/bin/python ...   # test the pldns installed in that Python
#   bench/run.sh --no-pldns ...                   # the harness alone (no pldns row)
#   bench/run.sh --with-nc ...                    # also pldns-nc: pldns with cache.enabled false
#   bench/run.sh --with-py ...                    # also pldns-py: the pure-Python build
#   bench/run.sh --help                           # the harness's own options
#
# What it does, in order:
#   1. installs the missing tools from Debian (apt-get, as root): dnsperf dnsdist unbound
#      dnsmasq-base knot bind9-dnsutils iproute2 util-linux python3-venv; not root: prints the
#      command and stops;
#   2. creates bench/.venv (dnslib and uvloop for the Python baseline peers, and pldns from this
#      clone, editable: the pure-Python build, the pldns-py row) unless it is already there, and
#      bench/.venv-compiled: pldns from this clone with its data plane compiled by mypyc
#      (PLDNS_COMPILE=1, the container image's build; the pldns and pldns-nc rows), rebuilt
#      whenever the clone's source changed;
#   3. generates bench/data/ (the upstream zone and the dnsperf query files, seeded) if missing;
#   4. runs bench.py with pldns as a --candidate inside a private network namespace whose only
#      interface is lo (`unshare --net`), so nothing can reach another address;
#   5. copies the report to bench/results/<stamp>-report.md.
# Every argument except the leading --python PATH / --no-pldns / --with-* goes to bench.py unchanged
# (a relative --out is made absolute). When no --peers is given, the README's comparison set is
# used.
#
# Environment: BENCH_HOST_NET=1 skips the network namespace (then check `ss -lunp | grep 530`).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
python=""
with_pldns=1
with_nc=""
with_py=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --python)
      [[ $# -ge 2 ]] || { echo "bench/run.sh: --python needs a path" >&2; exit 2; }
      python="$2"; shift 2 ;;
    --python=*) python="${1#--python=}"; shift ;;
    --no-pldns) with_pldns=""; shift ;;
    --with-nc) with_nc=1; shift ;;
    --with-py) with_py=1; shift ;;
    *) break ;;
  esac
done

# 1. tools (Debian package names after the colon)
need=()
for t in gcc:gcc dnsperf:dnsperf dnsdist:dnsdist unbound:unbound dnsmasq:dnsmasq-base knotd:knot \
         dig:bind9-dnsutils taskset:util-linux unshare:util-linux ip:iproute2; do
  command -v "${t%%:*}" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "${t%%:*}" \
    >/dev/null 2>&1 || need+=("${t#*:}")
done
export PATH="$PATH:/usr/sbin:/sbin"
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1 && [[ ! -x "$here/.venv/bin/python" ]]; then
  need+=(python3-venv)
fi
python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  || need+=(python3-dev)  # the headers mypyc's build needs
if ((${#need[@]})); then
  mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "bench/run.sh: installing ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "bench/run.sh: missing tools; install them with:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y ${need[*]}" >&2
    exit 2
  fi
fi

# 2. the harness's venv: dnslib + uvloop for the Python baselines, pldns from this clone
venv="$here/.venv"
if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import dnslib, uvloop' >/dev/null 2>&1; then
  "$venv/bin/pip" install -q --disable-pip-version-check dnslib uvloop
fi
pure=""
if [[ -n "$with_pldns" && -z "$python" ]]; then
  # editable: the code under test is this clone's working tree
  if ! (cd / && "$venv/bin/python" -c 'import os, sys, pldns; sys.exit(os.path.dirname(os.path.dirname(pldns.__file__)) != sys.argv[1])' "$repo") >/dev/null 2>&1; then
    "$venv/bin/pip" install -q --disable-pip-version-check -e "$repo"
  fi
  pure="$venv/bin/python"
  # The compiled build: installed (not editable), so rebuilt when the source it came from changed.
  cvenv="$here/.venv-compiled"
  [[ -x "$cvenv/bin/python" ]] || python3 -m venv "$cvenv"
  pip=("$cvenv/bin/pip" install -q --disable-pip-version-check --no-build-isolation)
  "$cvenv/bin/python" -c 'import mypy, setuptools, wheel' 2>/dev/null \
    || "$cvenv/bin/pip" install -q --disable-pip-version-check mypy setuptools wheel
  source_id="$(cd "$repo" && cat setup.py pyproject.toml pldns/*.py pldns/*/*.py pldns/*/*.c | sha256sum | cut -c1-16)"
  if [[ "$(cat "$cvenv/pldns-source" 2>/dev/null)" != "$source_id" ]] \
     || ! (cd / && "$cvenv/bin/pldns" version 2>/dev/null | grep -q "(data plane: compiled)"); then
    echo "bench/run.sh: compiling pldns into bench/.venv-compiled (mypyc, about a minute)" >&2
    (cd / && "${pip[@]}" "$repo" >/dev/null)  # its dependencies, the first time
    (cd / && PLDNS_COMPILE=1 "${pip[@]}" --force-reinstall --no-deps "$repo" >/dev/null)
    (cd / && "$cvenv/bin/pldns" version | grep -q "(data plane: compiled)") \
      || { echo "bench/run.sh: the compiled build did not load compiled" >&2; exit 2; }
    echo "$source_id" >"$cvenv/pldns-source"
  fi
  python="$cvenv/bin/python"
fi

candidate=()
if [[ -n "$with_pldns" ]]; then
  # the absolute interpreter (pyenv shims and venv symlinks resolve to something that is
  # found inside the namespace too)
  if ! python="$("$python" -c 'import sys; print(sys.executable)')" || [[ -z "$python" ]]; then
    echo "bench/run.sh: cannot run $python" >&2; exit 2
  fi
  if ! "$python" -c 'import pldns, yaml' 2>/dev/null; then
    echo "bench/run.sh: pldns is not importable with $python; run '$python -m pip install -e $repo'" >&2
    exit 2
  fi
  pldns_exe="$(dirname "$python")/pldns"
  [[ -x "$pldns_exe" ]] || { echo "bench/run.sh: no pldns script next to $python" >&2; exit 2; }
  # bench.py fills the {…} placeholders with str.format and runs `bash -c "exec COMMAND"`
  # in the cell directory: hence absolute, shell-quoted paths.
  candidate=(--candidate "pldns=$(printf '%q' "$python") $(printf '%q' "$here/pldns-candidate.py") --pldns $(printf '%q' "$pldns_exe") --synth-json {synth_json} --upstream {upstream} --listen {listen} --config-out {rundir}/pldns.yaml")
  if [[ -n "$with_nc" ]]; then  # a second row: pldns with its cache off, like the -nc peers
    candidate+=(--candidate "pldns-nc=$(printf '%q' "$python") $(printf '%q' "$here/pldns-candidate.py") --pldns $(printf '%q' "$pldns_exe") --synth-json {synth_json} --upstream {upstream} --listen {listen} --config-out {rundir}/pldns.yaml --no-cache")
  fi
  if [[ -n "$with_py" && -n "$pure" ]]; then  # the pure-Python build, default config
    candidate+=(--candidate "pldns-py=$(printf '%q' "$pure") $(printf '%q' "$here/pldns-candidate.py") --pldns $(printf '%q' "$(dirname "$pure")/pldns") --synth-json {synth_json} --upstream {upstream} --listen {listen} --config-out {rundir}/pldns.yaml")
  fi
fi

# 3. data
if [[ ! -f "$here/data/q-miss-main.txt" || ! -f "$here/data/q-zipf.txt" ]]; then
  echo "bench/run.sh: generating bench/data/ (once; ~2M query names)" >&2
  python3 "$here/gen_data.py" --outdir "$here/data"
fi

# arguments for bench.py
stamp="$(date +%Y%m%d-%H%M%S)"
args=()
out=""
want_help=""
have_peers=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out)
      [[ $# -ge 2 ]] || { echo "bench/run.sh: --out needs a directory" >&2; exit 2; }
      out="$(realpath -m "$2")"; args+=(--out "$out"); shift 2 ;;
    --out=*) out="$(realpath -m "${1#--out=}")"; args+=(--out "$out"); shift ;;
    --peers|--peers=*) have_peers=1; args+=("$1"); shift ;;
    -h|--help) want_help=1; args+=("$1"); shift ;;
    *) args+=("$1"); shift ;;
  esac
done
if [[ -z "$have_peers" ]]; then
  args+=(--peers dnsdist,unbound-nc,dnsmasq-nc,py-uvloop-raw)
fi
if [[ -z "$out" && -z "$want_help" ]]; then
  out="$here/runs/$stamp"
  args+=(--out "$out")
fi

# 4. run, loopback only
inner='set -e
if [[ -n "${BENCH_IN_NETNS:-}" ]]; then
  ip link set lo up
  if ip -o addr | grep -v " lo " | grep -q inet; then
    echo "refusing to run: the network namespace has interfaces other than lo" >&2; exit 3
  fi
  echo "running in a private network namespace (loopback only)" >&2
fi
exec python3 "$@"'
if [[ -n "${BENCH_HOST_NET:-}" ]]; then
  ns=()
elif [[ $(id -u) -eq 0 ]]; then
  ns=(env BENCH_IN_NETNS=1 unshare --net --)
else
  ns=(env BENCH_IN_NETNS=1 unshare --net --map-root-user --)
fi
rc=0
"${ns[@]}" bash -c "$inner" bench "$here/bench.py" "${candidate[@]}" "${args[@]}" || rc=$?

# 5. the report
if [[ -n "$want_help" ]]; then
  exit "$rc"
fi
if [[ -f "$out/report.md" ]]; then
  mkdir -p "$here/results"
  dest="$here/results/$stamp-report.md"
  cp "$out/report.md" "$dest"
  echo >&2
  echo "bench/run.sh: report:   $out/report.md" >&2
  echo "bench/run.sh: run dir:  $out (results.json, per-cell logs and configs)" >&2
  echo "bench/run.sh: copied to $dest" >&2
else
  echo "bench/run.sh: no report.md in $out (exit status $rc)" >&2
  [[ $rc -ne 0 ]] || rc=1
fi
exit "$rc"

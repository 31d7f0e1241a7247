#!/usr/bin/env bash
# Run the shared DNS forwarder benchmark with pldns as an extra row. See bench/README.md.
#
#   bench/run.sh --peers dnsdist,unbound-nc,dnsmasq-nc,py-uvloop-raw --workloads synth,pass,mix,miss
#   bench/run.sh --peers dnsdist,py-uvloop-raw --workloads synth,miss --duration 3 --lat-duration 2
#   bench/run.sh --python /path/to/venv/bin/python --peers dnsdist ...
#   bench/run.sh --help            # the harness's own options
#
# Every argument except a leading `--python PATH` is passed to the harness's run.sh unchanged
# (a relative `--out DIR` is made absolute first). pldns must be installed in that Python:
# `pip install -e .` in the repo. The harness's own .venv only has dnslib and uvloop.
#
# Environment:
#   PLDNS_SHARED_BENCH   the harness to copy (default: <repo>/../shared/bench)
#   PLDNS_PYTHON         the Python with pldns installed (default: python3 on PATH, resolved)
#   PLDNS_BENCH_WORKDIR  reuse this copy of the harness (keeps its .venv and data/ between runs)
#                        instead of a fresh temporary directory
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
shared="${PLDNS_SHARED_BENCH:-$here/../../shared/bench}"
python="${PLDNS_PYTHON:-}"

if [[ "${1:-}" == "--python" ]]; then
  [[ $# -ge 2 ]] || { echo "bench/run.sh: --python needs a path" >&2; exit 2; }
  python="$2"
  shift 2
elif [[ "${1:-}" == --python=* ]]; then
  python="${1#--python=}"
  shift
fi
if [[ -z "$python" ]]; then
  python="$(command -v python3 || true)"
fi
if [[ -z "$python" ]]; then
  echo "bench/run.sh: no python3 on PATH; pass --python PATH" >&2
  exit 2
fi
# Resolve to the real interpreter (pyenv shims, venv symlinks are fine too, but an absolute
# sys.executable is what must be found inside the network namespace).
if ! python="$("$python" -c 'import sys; print(sys.executable)')" || [[ -z "$python" ]]; then
  echo "bench/run.sh: cannot run $python" >&2
  exit 2
fi
if ! "$python" -c 'import pldns, yaml' 2>/dev/null; then
  echo "bench/run.sh: pldns is not importable with $python; run 'pip install -e $repo' with it first" >&2
  exit 2
fi
pldns_exe="$(dirname "$python")/pldns"
if [[ ! -x "$pldns_exe" ]]; then
  echo "bench/run.sh: no pldns script next to $python ($pldns_exe); run 'pip install -e $repo'" >&2
  exit 2
fi

if [[ ! -f "$shared/run.sh" || ! -f "$shared/bench.py" ]]; then
  echo "bench/run.sh: no harness at $shared (set PLDNS_SHARED_BENCH)" >&2
  exit 2
fi
shared="$(cd "$shared" && pwd)"

# A writable copy of the harness: it creates .venv/, data/ and runs/ next to itself.
if [[ -n "${PLDNS_BENCH_WORKDIR:-}" ]]; then
  work="$PLDNS_BENCH_WORKDIR"
  mkdir -p "$work/bench"
  # refresh the harness files, keep .venv/, data/ and runs/
  (cd "$shared" && find . -path ./.venv -prune -o -path ./data -prune -o -path ./runs -prune \
     -o -type f -print0 | while IFS= read -r -d '' f; do
       mkdir -p "$work/bench/$(dirname "$f")"
       install -m "$([[ -x "$f" ]] && echo 755 || echo 644)" "$f" "$work/bench/$f"
     done)
else
  work="$(mktemp -d "${TMPDIR:-/tmp}/pldns-bench.XXXXXX")"
  cp -r "$shared" "$work/bench"
  chmod -R u+w "$work/bench"
fi
harness="$work/bench"

# Pass everything through; make a relative --out absolute (the harness runs from its own dir),
# and choose the output directory ourselves when none is given, so we know where the report is.
stamp="$(date +%Y%m%d-%H%M%S)"
args=()
out=""
want_help=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out)
      [[ $# -ge 2 ]] || { echo "bench/run.sh: --out needs a directory" >&2; exit 2; }
      out="$(realpath -m "$2")"; args+=(--out "$out"); shift 2 ;;
    --out=*)
      out="$(realpath -m "${1#--out=}")"; args+=(--out "$out"); shift ;;
    -h|--help)
      want_help=1; args+=("$1"); shift ;;
    *)
      args+=("$1"); shift ;;
  esac
done
if [[ -z "$out" && -z "$want_help" ]]; then
  out="$harness/runs/$stamp"
  args+=(--out "$out")
fi

# The candidate runs as `bash -c "exec COMMAND"` after Python str.format fills the {…}
# placeholders, inside the loopback-only namespace, with the cell directory as its cwd:
# hence absolute, shell-quoted paths.
q_python="$(printf '%q' "$python")"
q_script="$(printf '%q' "$here/pldns-candidate.py")"
q_pldns="$(printf '%q' "$pldns_exe")"
candidate="pldns=$q_python $q_script --pldns $q_pldns --synth-json {synth_json} --upstream {upstream} --listen {listen} --config-out {rundir}/pldns.yaml"

echo "bench/run.sh: harness copy in $harness" >&2
echo "bench/run.sh: candidate $candidate" >&2
rc=0
"$harness/run.sh" --candidate "$candidate" "${args[@]}" || rc=$?

if [[ -n "$want_help" ]]; then
  exit "$rc"
fi
if [[ -f "$out/report.md" ]]; then
  mkdir -p "$here/results"
  dest="$here/results/$stamp-report.md"
  cp "$out/report.md" "$dest"
  echo >&2
  echo "bench/run.sh: report:      $out/report.md" >&2
  echo "bench/run.sh: run dir:     $out (results.json, per-cell logs and configs)" >&2
  echo "bench/run.sh: copied to    $dest" >&2
else
  echo "bench/run.sh: no report.md in $out (harness exit status $rc)" >&2
  [[ $rc -ne 0 ]] || rc=1
fi
exit "$rc"

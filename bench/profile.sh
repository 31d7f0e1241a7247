#!/usr/bin/env bash
# Profile pldns's hot path under dnsperf load, loopback only. See bench/README.md.
#
#   bench/profile.sh                                  # py-spy, synth + pass + miss, 5 s each
#   bench/profile.sh --mode cprofile --workloads miss
#   bench/profile.sh --python /path/to/venv/bin/python --duration 5 --out /tmp/prof
#
# Inside a private network namespace (only lo): knotd serves the harness's example.test zone on
# 127.0.0.1:15300 (CPU1), pldns (generated config, same as the benchmark candidate) listens on
# 127.0.0.1:15353 (CPU0), dnsperf (CPU1) runs for --duration seconds per workload against a
# fresh pldns, and either py-spy samples pldns (--mode pyspy: wall-clock shares of the busy
# time, no idle) or pldns runs under cProfile (--mode cprofile: exact call counts, per-query
# cost, ~3x slower than real). Output: one directory with per-workload profiles and summaries.
# Every process is started here and stopped by its PID.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
shared="$here"  # gen_data.py
python="${PLDNS_PYTHON:-$(command -v python3 || true)}"
mode=pyspy
duration=5
workloads=synth,pass,miss
out=""
rate=250
while [[ $# -gt 0 ]]; do
  case "$1" in
    --python) python="$2"; shift 2 ;;
    --mode) mode="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --workloads) workloads="$2"; shift 2 ;;
    --out) out="$(realpath -m "$2")"; shift 2 ;;
    --rate) rate="$2"; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "bench/profile.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$mode" in pyspy|cprofile) ;; *) echo "--mode pyspy|cprofile" >&2; exit 2 ;; esac

if [[ -z "${PLDNS_PROFILE_IN_NETNS:-}" ]]; then
  python="$("$python" -c 'import sys; print(sys.executable)')"
  "$python" -c 'import pldns, yaml' || { echo "pip install -e . first (with $python)" >&2; exit 2; }
  for t in dnsperf knotd dig taskset unshare ip; do
    command -v "$t" >/dev/null || { echo "missing $t (see bench/README.md)" >&2; exit 2; }
  done
  if [[ $mode == pyspy ]] && ! command -v py-spy >/dev/null && [[ ! -x "$(dirname "$python")/py-spy" ]]; then
    echo "missing py-spy: $python -m pip install py-spy" >&2; exit 2
  fi
  [[ -n "$out" ]] || out="$(mktemp -d "${TMPDIR:-/tmp}/pldns-profile.XXXXXX")"
  mkdir -p "$out/data"
  if [[ ! -f "$out/data/q-miss-main.txt" ]]; then
    "$python" "$shared/gen_data.py" --outdir "$out/data" --miss-lines 400000 >/dev/null
  fi
  if [[ $(id -u) -eq 0 ]]; then ns=(unshare --net); else ns=(unshare --net --map-root-user); fi
  export PLDNS_PROFILE_IN_NETNS=1
  exec "${ns[@]}" -- bash "$0" --python "$python" --mode "$mode" --duration "$duration" \
    --workloads "$workloads" --out "$out" --rate "$rate"
fi

ip link set lo up
if ip -o addr | grep -v ' lo ' | grep -q inet; then
  echo "refusing: the namespace has interfaces other than lo" >&2; exit 3
fi
pyspy="$(command -v py-spy || echo "$(dirname "$python")/py-spy")"
pldns_exe="$(dirname "$python")/pldns"
data="$out/data"
up_port=15300
port=15353

pids=()  # still running, started here
forget() { local keep=() p; for p in "${pids[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done; pids=("${keep[@]}"); }
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

# upstream: knotd, as the harness runs it
k="$out/knot"; mkdir -p "$k"
cat >"$k/knot.conf" <<EOF
server:
    listen: 127.0.0.1@$up_port
    rundir: $k
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
database:
    storage: $k/db
log:
  - target: stderr
    any: notice
template:
  - id: default
    storage: $data
    file: "%s.zone"
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
    semantic-checks: off
zone:
  - domain: example.test
EOF
taskset -c 1 knotd -c "$k/knot.conf" >"$k/knotd.log" 2>&1 &
knot=$!; pids+=("$knot")
for _ in $(seq 100); do
  dig +short +time=1 +tries=1 -p $up_port @127.0.0.1 h00000.example.test A 2>/dev/null | grep -q . && break
  sleep 0.2
done

"$python" "$here/pldns-candidate.py" --synth-json "$data/synth.json" --upstream 127.0.0.1:$up_port \
  --listen 127.0.0.1:$port --config-out "$out/pldns.yaml" --pldns "$pldns_exe" --dry-run >/dev/null

declare -A qfile=([synth]=q-synth.txt [pass]=q-pass.txt [mix]=q-mix.txt [miss]=q-miss-main.txt)
IFS=, read -ra wls <<<"$workloads"
for wl in "${wls[@]}"; do
  f="${qfile[$wl]:-}"; [[ -n "$f" ]] || { echo "unknown workload $wl" >&2; exit 2; }
  d="$out/$wl"; mkdir -p "$d"
  if [[ $mode == cprofile ]]; then
    taskset -c 0 "$python" -m cProfile -o "$d/pldns.prof" -m pldns serve --config "$out/pldns.yaml" \
      --log-level warning >"$d/server.log" 2>&1 &
  else
    taskset -c 0 "$pldns_exe" serve --config "$out/pldns.yaml" --log-level warning >"$d/server.log" 2>&1 &
  fi
  srv=$!; pids+=("$srv")
  ok=""
  for _ in $(seq 100); do
    if dig +short +time=1 +tries=1 -p $port @127.0.0.1 ecs-vpc.cn-hangzhou.aliyuncs.com A 2>/dev/null | grep -q . &&
       dig +short +time=1 +tries=1 -p $port @127.0.0.1 h00001.example.test A 2>/dev/null | grep -q .; then
      ok=1; break
    fi
    sleep 0.2
  done
  [[ -n "$ok" ]] || { echo "pldns did not come up; see $d/server.log" >&2; exit 1; }
  # warm-up (opens the upstream socket pool), then the measured run
  taskset -c 1 dnsperf -s 127.0.0.1 -p $port -d "$data/$f" -l 1 -c 10 -q 100 -t 2 >"$d/warmup.txt" 2>&1 || true
  spy=""
  if [[ $mode == pyspy ]]; then
    taskset -c 1 "$pyspy" record --pid "$srv" --duration "$duration" --rate "$rate" \
      --format raw -o "$d/pyspy.txt" >"$d/pyspy.log" 2>&1 &
    spy=$!; pids+=("$spy")
  fi
  taskset -c 1 timeout $((duration + 20)) dnsperf -s 127.0.0.1 -p $port -d "$data/$f" -l "$duration" \
    -c 10 -q 100 -t 2 >"$d/dnsperf.txt" 2>&1 || true
  if [[ -n "$spy" ]]; then wait "$spy" || true; forget "$spy"; fi
  kill -TERM "$srv"; wait "$srv" || true; forget "$srv"
  queries=$(awk '/Queries completed:/ {print $3}' "$d/dnsperf.txt")
  qps=$(awk '/Queries per second:/ {print $4}' "$d/dnsperf.txt")
  echo "== $wl: $queries queries, $qps QPS$([[ $mode == cprofile ]] && echo ' (under cProfile)')" | tee "$d/summary.txt"
  if [[ $mode == cprofile ]]; then
    "$python" - "$d/pldns.prof" "$queries" <<'EOF' | tee -a "$d/summary.txt"
import pstats, sys
st = pstats.Stats(sys.argv[1])
n = int(sys.argv[2] or 0) or 1
rows = []
for (fn, line, name), (cc, nc, tt, ct, callers) in st.stats.items():
    rows.append((tt, ct, nc, f"{fn.split('/site-packages/')[-1].replace('/work/main/', '')}:{line}({name})"))
rows.sort(reverse=True)
total = sum(r[0] for r in rows)
print(f"{'self us/q':>9} {'incl us/q':>9} {'calls/q':>7}  function   (total self {total / n * 1e6:.1f} us/query)")
for tt, ct, nc, name in rows[:30]:
    print(f"{tt / n * 1e6:9.2f} {ct / n * 1e6:9.2f} {nc / n:7.2f}  {name}")
EOF
  else
    "$python" - "$d/pyspy.txt" <<'EOF' | tee -a "$d/summary.txt"
import collections, re, sys
lines, funcs, incl, total = collections.Counter(), collections.Counter(), collections.Counter(), 0
def short(frame):
    return re.sub(r" \((?:/work/main/|.*/site-packages/|.*/lib/python3\.\d+/|/tmp/[^/]+/)?", " (", frame)
for line in open(sys.argv[1]):
    stack, _, count = line.rstrip("\n").rpartition(" ")
    if not count.isdigit():
        continue
    count = int(count)
    total += count
    frames = [short(f) for f in stack.split(";")]
    leaf = frames[-1]
    if leaf.startswith("__create_fn__") and len(frames) > 1:
        leaf = leaf + " <- " + frames[-2]  # which dataclass: show the caller
    lines[leaf] += count
    funcs[re.sub(r":\d+\)", ")", leaf)] += count
    for f in {re.sub(r":\d+\)", ")", f) for f in frames}:
        incl[f] += count
print(f"{total} samples (busy time only; C code, syscalls and uvloop count under the calling Python line)")
print("-- self share by function")
for f, c in funcs.most_common(20):
    print(f"{100 * c / total:6.1f}%  {f}")
print("-- self share by line")
for f, c in lines.most_common(20):
    print(f"{100 * c / total:6.1f}%  {f}")
print("-- inclusive share by function (pldns code)")
for f, c in incl.most_common(300):
    if "pldns/" in f:
        print(f"{100 * c / total:6.1f}%  {f}")
EOF
  fi
done
echo "profiles in $out" >&2

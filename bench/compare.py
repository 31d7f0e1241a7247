#!/usr/bin/env python3
"""Compare the throughput of two or more runs: ./compare.py runs/run1 runs/run2 [...]

Prints, per peer x workload, the QPS of each run and the spread (max-min)/mean, so noise is visible.
"""

import json
import os
import sys


def load(d):
    with open(os.path.join(d, "results.json")) as f:
        j = json.load(f)
    return j["meta"], {(r["peer"], r["workload"]): r for r in j["results"]}


def k(v):
    return "-" if v is None else "%.1fk" % (v / 1000.0)


def main():
    dirs = sys.argv[1:]
    if len(dirs) < 2:
        sys.exit(__doc__)
    runs = [load(d) for d in dirs]
    peers, workloads = [], []
    for _, cells in runs:
        for p, w in cells:
            if p not in peers:
                peers.append(p)
            if w not in workloads:
                workloads.append(w)
    names = [os.path.basename(os.path.normpath(d)) for d in dirs]
    print("QPS per run (%s) and spread = (max-min)/mean" % " / ".join(names))
    print()
    print("| peer | " + " | ".join(workloads) + " |")
    print("|---|" + "---|" * len(workloads))
    for p in peers:
        row = []
        for w in workloads:
            vals = [c.get((p, w), {}).get("qps") for _, c in runs]
            ok = [v for v in vals if v]
            s = " / ".join(k(v) for v in vals)
            if len(ok) >= 2:
                s += " (%.0f%%)" % (100.0 * (max(ok) - min(ok)) / (sum(ok) / len(ok)))
            row.append(s)
        print("| %s | %s |" % (p, " | ".join(row)))


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# raftkit's framework cost against openraft's, in one process: 3 members, a memory log, empty
# proposals, N concurrent proposers. raftkit: `raft-core/examples/cluster_throughput`
# (LocalTransport); openraft: its `benchmarks/minimal` (function-call network), with 2 server
# workers to match this machine. They alternate at each client count, so drift on a shared
# machine hits both alike; each point is the median of ROUNDS runs.
#
#   OPENRAFT_BENCH=/path/to/openraft/target/release/bench benches/inprocess-compare.sh
#   CLIENTS="1 64 256" ROUNDS=3 SECONDS_PER_RUN=3 OUT=benches/results benches/inprocess-compare.sh
#
# openraft's bench is not part of this workspace: fetch github.com/databendlabs/openraft and
# run `cargo build --release --bin bench` in benchmarks/minimal. Without OPENRAFT_BENCH only
# raftkit runs. OUT: also write writes/s as CSV (series,x,y) for benches/plot.py.
# NO_SESSIONS=1: raftkit proposes outside client sessions, as openraft (which has none) does.
# ALLOCATOR=mimalloc or jemalloc: both binaries run on that allocator (LD_PRELOAD of the OS
# package's library: apt-get install libmimalloc2.0 or libjemalloc2) instead of glibc's
# malloc, which both use by default; raft-kv itself ships on mimalloc.
#
# raftkit's side is built as openraft's bench is (thin LTO, one codegen unit), in a target
# directory of its own so the workspace's release build is left as it is.
set -euo pipefail
cd "$(dirname "$0")/.."

clients="${CLIENTS:-1 16 64 256 1024}"
rounds="${ROUNDS:-3}"
secs="${SECONDS_PER_RUN:-3}"
openraft="${OPENRAFT_BENCH:-}"
target="${CARGO_TARGET_DIR:-target}"

lto_target="$target/inprocess-lto"
CARGO_TARGET_DIR="$lto_target" CARGO_PROFILE_RELEASE_LTO=thin CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
    cargo build --release -p raft-core --features testing --example cluster_throughput
ours="$lto_target/release/examples/cluster_throughput"
if [ -z "$openraft" ]; then
    echo "OPENRAFT_BENCH is not set: running raftkit alone (see the comment at the top)"
elif [ ! -x "$openraft" ]; then
    echo "$openraft is not an executable" >&2
    exit 1
fi

case "${ALLOCATOR:-glibc}" in
    glibc) preload="" ;;
    mimalloc) preload=/usr/lib/x86_64-linux-gnu/libmimalloc.so.2 ;;
    jemalloc) preload=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 ;;
    *) echo "ALLOCATOR is glibc, mimalloc or jemalloc" >&2; exit 1 ;;
esac
if [ -n "$preload" ] && [ ! -e "$preload" ]; then
    echo "$preload is missing: install the OS package (see the comment at the top)" >&2
    exit 1
fi

results="$(mktemp)"
trap 'rm -f "$results"' EXIT
for n in $clients; do
    for _ in $(seq 1 "$rounds"); do
        rate="$(LD_PRELOAD="$preload" "$ours" "$secs" "$n" | awk 'NR > 1 { print $2 }')"
        echo "raftkit $n $rate" | tee -a "$results"
        if [ -n "$openraft" ]; then
            # Enough operations for about SECONDS_PER_RUN s at the last measured rate.
            ops=$(( ${rate%.*} * secs + 1000 ))
            per_ms="$(LD_PRELOAD="$preload" "$openraft" --client-workers 1 --server-workers 2 -c "$n" -n "$ops" -m 3 2>&1 |
                sed -n 's/.*op\/ms: \([0-9]*\).*/\1/p' | tail -n 1)"
            echo "openraft $n $((per_ms * 1000))" | tee -a "$results"
        fi
    done
done

python3 - "$results" "${OUT:-}" <<'PY'
import os, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    system, n, rate = line.split()
    runs.setdefault((system, int(n)), []).append(float(rate))
medians = {k: statistics.median(v) for k, v in runs.items()}
ns = sorted({n for _, n in medians})
print()
print(f"| proposers | raftkit writes/s | openraft writes/s | ratio |")
print("|---:|---:|---:|---:|")
for n in ns:
    ours, theirs = medians.get(("raftkit", n)), medians.get(("openraft", n))
    ratio = f"{ours / theirs:.2f}" if ours and theirs else "-"
    cell = lambda v: f"{v:,.0f}".replace(",", " ") if v else "-"
    print(f"| {n} | {cell(ours)} | {cell(theirs)} | {ratio} |")
out = sys.argv[2]
if out:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "inprocess-writes-per-sec.csv"), "w") as f:
        f.write("series,x,y\n")
        for system in ("raftkit", "openraft"):
            for n in ns:
                if (system, n) in medians:
                    f.write(f"{system},{n},{medians[(system, n)]}\n")
PY

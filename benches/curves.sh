#!/usr/bin/env bash
# Regenerates the cost curves in BENCHMARKS.md: the data (benches/results/*.csv) and the
# plots (benches/plots/*.svg). raft-kv and etcd side by side from 1 to 1024 clients
# (benches/etcd-compare.sh), and raftkit against openraft in one process
# (benches/inprocess-compare.sh, when OPENRAFT_BENCH points at openraft's built bench).
#
#   cargo build --release -p raft-kv-example -p raftkit-benches
#   OPENRAFT_BENCH=/path/to/openraft/target/release/bench benches/curves.sh
#   PLOT_ONLY=1 benches/curves.sh      # redraw the plots from the CSVs already there
set -euo pipefail
cd "$(dirname "$0")/.."

results=benches/results
plots=benches/plots
mkdir -p "$results" "$plots"

if [ "${PLOT_ONLY:-0}" != 1 ]; then
    CLIENTS="${CLIENTS:-1 4 16 64 256 1024}" OUT="$results" benches/etcd-compare.sh
    CLIENTS="${INPROCESS_CLIENTS:-1 16 64 256 1024}" OUT="$results" benches/inprocess-compare.sh
fi

plot() {
    local name="$1"
    shift
    if [ -f "$results/$name.csv" ]; then
        python3 benches/plot.py "$results/$name.csv" "$plots/$name.svg" --log-x "$@"
        echo "$plots/$name.svg"
    fi
}
plot puts-per-sec --title "Puts/s, 3 members, fsync on, 100 B values" \
    --x-label "concurrent clients" --y-label "puts/s"
plot p99-ms --title "p99 put latency, 3 members, fsync on" \
    --x-label "concurrent clients" --y-label "ms" --log-y
plot cpu-us-per-put --title "Servers' CPU per put (3 servers together)" \
    --x-label "concurrent clients" --y-label "µs of CPU" --log-y
plot inprocess-writes-per-sec --title "Framework cost: 3 members in one process, memory log" \
    --x-label "concurrent proposers" --y-label "writes/s"

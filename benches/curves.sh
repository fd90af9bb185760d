#!/usr/bin/env bash
# Regenerates the cost curves in BENCHMARKS.md: the data (benches/results/*.csv) and the
# plots (benches/plots/*.svg). CURVES picks which to measure (default: all of them):
#
#   clients     raft-kv and etcd side by side from 1 to 1024 clients (benches/etcd-compare.sh)
#   inprocess   raftkit against openraft in one process (benches/inprocess-compare.sh, when
#               OPENRAFT_BENCH points at openraft's built bench)
#   value-size  raft-kv and etcd at 64 clients, values of 100 B to 64 KiB (etcd-compare.sh)
#   members     raft-kv and etcd with 3 and 5 members at 1, 64 and 256 clients (etcd-compare.sh)
#   state       restart time and memory against 10k to 1M keys (benches/state-curves.sh)
#
#   cargo build --release -p raft-kv-example -p raftkit-benches
#   OPENRAFT_BENCH=/path/to/openraft/target/release/bench benches/curves.sh
#   CURVES="value-size members state" benches/curves.sh    # only those (about 20 minutes)
#   PLOT_ONLY=1 benches/curves.sh      # redraw the plots from the CSVs already there
set -euo pipefail
cd "$(dirname "$0")/.."

results=benches/results
plots=benches/plots
mkdir -p "$results" "$plots"
curves=" ${CURVES:-clients inprocess value-size members state} "

if [ "${PLOT_ONLY:-0}" != 1 ]; then
    if [[ $curves == *" clients "* ]]; then
        CLIENTS="${CLIENTS:-1 4 16 64 256 1024}" OUT="$results" benches/etcd-compare.sh
    fi
    if [[ $curves == *" inprocess "* ]]; then
        CLIENTS="${INPROCESS_CLIENTS:-1 16 64 256 1024}" OUT="$results" benches/inprocess-compare.sh
    fi
    if [[ $curves == *" value-size "* ]]; then
        # 5 s per point: at 64 KiB one etcd run writes gigabytes (WAL and bbolt, 3 members).
        DURATION="${VALUE_SIZE_DURATION:-5}" CLIENTS=64 VALUE_SIZES="100 1024 4096 16384 65536" \
            CSV_PREFIX=value-size- OUT="$results" benches/etcd-compare.sh
    fi
    if [[ $curves == *" members "* ]]; then
        CLIENTS="1 64 256" NODES="3 5" CSV_PREFIX=members- OUT="$results" benches/etcd-compare.sh
    fi
    if [[ $curves == *" state "* ]]; then
        OUT="$results" benches/state-curves.sh
    fi
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
plot value-size-puts-per-sec --title "Puts/s against value size, 3 members, 64 clients" \
    --x-label "value size" --y-label "puts/s" --x-ticks-at-data --x-bytes
plot value-size-p99-ms --title "p99 put latency against value size, 64 clients" \
    --x-label "value size" --y-label "ms" --log-y --x-ticks-at-data --x-bytes
plot members-puts-per-sec --title "Puts/s, 3 and 5 members, 100 B values" \
    --x-label "concurrent clients" --y-label "puts/s" --x-ticks-at-data
plot members-p99-ms --title "p99 put latency, 3 and 5 members" \
    --x-label "concurrent clients" --y-label "ms" --log-y --x-ticks-at-data
plot restart-seconds --title "Follower restart (SIGKILL) to first linearizable read" \
    --x-label "keys (100 B values)" --y-label "seconds" --log-y --x-ticks-at-data
plot memory-rss-mib --title "Memory: RSS of the 3 servers after loading N keys" \
    --x-label "keys (100 B values)" --y-label "MiB" --log-y --x-ticks-at-data

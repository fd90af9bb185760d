#!/usr/bin/env bash
# CPU time the three raft-kv servers spend per operation, for one load level. On a shared,
# noisy machine this is steadier than throughput, so it is what before/after comparisons of
# the server's code use: build both versions, then alternate runs of each.
#
#   benches/server-cpu.sh [BIN_DIR] [CLIENTS] [READ_RATIO] [SECONDS]
#   benches/server-cpu.sh target/release 256 0 5
#
# BIN_DIR holds `raft-kv` and `raft-bench` (default: the release target directory; build it
# with `cargo build --release --workspace --all-targets`). Prints one line:
#   clients=256 ratio=0 ops/s=28251 server_cpu_us_per_op=42
# LEADER_ONLY=1 sends every client to the leader instead of spreading them over the three
# nodes: the difference is what forwarding from followers costs.
set -euo pipefail
cd "$(dirname "$0")/.."

bin="${1:-${CARGO_TARGET_DIR:-target}/release}"
clients="${2:-256}"
ratio="${3:-0}"
secs="${4:-5}"
base_port="${BASE_PORT:-7800}"

transport=grpc
storage=rocksdb
# shellcheck source=benches/start-cluster.sh
source benches/start-cluster.sh

pids="$(pgrep -f -- "--data-dir $data/node-" | tr '\n' ' ')"
[ -n "$pids" ] || { echo "no raft-kv servers found" >&2; exit 1; }
# utime + stime of the servers, in clock ticks.
ticks() {
    local total=0 pid
    for pid in $pids; do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    echo "$total"
}
hz="$(getconf CLK_TCK)"
if [ -n "${LEADER_ONLY:-}" ]; then
    for url in ${endpoints//,/ }; do
        if is_leader "$url"; then
            endpoints="$url"
            break
        fi
    done
    [[ $endpoints != *,* ]] || { echo "no node says it leads" >&2; exit 1; }
fi
# Warm up (connections, caches, the leader's first log segments) outside the measurement.
"$bin/raft-bench" --endpoints "$endpoints" --clients "$clients" --duration 2 --warmup 0 \
    --read-ratio "$ratio" >/dev/null
before="$(ticks)"
"$bin/raft-bench" --endpoints "$endpoints" --clients "$clients" --duration "$secs" --warmup 0 \
    --read-ratio "$ratio" >"$data/bench"
after="$(ticks)"
ops="$(tail -n 1 "$data/bench" | python3 -c 'import json, sys; j = json.load(sys.stdin); print(j["put"]["ops"] + j["get"]["ops"])')"
echo "clients=$clients ratio=$ratio${LEADER_ONLY:+ leader_only=1} ops/s=$((ops / secs)) server_cpu_us_per_op=$(((after - before) * 1000000 / hz / ops))"

#!/usr/bin/env bash
# Put latency through a follower (forwarded to the leader) and at the leader, on one fresh
# 3-node raft-kv cluster (gRPC, RocksDB, fsync on), 100-byte puts. The difference between the
# two lines is what a forward costs. Prints one line per target:
#   follower clients=1 puts/s=1043 p50_ms=0.925 p99_ms=1.435
#
#   benches/forward-latency.sh [BIN_DIR]             # BIN_DIR holds raft-kv and raft-bench
#   CLIENTS=16 SECONDS_PER_RUN=8 benches/forward-latency.sh target/release
#
# For a before/after, alternate two BIN_DIRs a few times: single runs differ by 5-10% here.
set -euo pipefail
cd "$(dirname "$0")/.."

bin="${1:-${CARGO_TARGET_DIR:-target}/release}"
clients="${CLIENTS:-1}"
secs="${SECONDS_PER_RUN:-8}"
base_port="${BASE_PORT:-7950}"
transport="${TRANSPORT:-grpc}"
storage=rocksdb
for tool in curl python3; do
    command -v "$tool" >/dev/null 2>&1 || { echo "$tool is needed" >&2; exit 1; }
done
[ -x "$bin/raft-kv" ] && [ -x "$bin/raft-bench" ] || {
    echo "$bin needs raft-kv and raft-bench: cargo build --release -p raft-kv-example -p raftkit-benches" >&2
    exit 1
}
# shellcheck source=benches/start-cluster.sh
source benches/start-cluster.sh

leader=""
follower=""
for url in ${endpoints//,/ }; do
    if is_leader "$url"; then
        leader="$url"
    else
        follower="$url"
    fi
done
[ -n "$leader" ] && [ -n "$follower" ] || { echo "no leader and follower found" >&2; exit 1; }
# Warm up (connections, the leader's first log segments) outside the measurement.
"$bin/raft-bench" --endpoints "$follower" --clients "$clients" --duration 2 --warmup 0 >/dev/null
for target in follower leader; do
    "$bin/raft-bench" --endpoints "${!target}" --clients "$clients" --duration "$secs" --warmup 0 |
        tail -n 1 | python3 -c "
import json, sys
put = json.load(sys.stdin)['put']
print('$target clients=$clients puts/s=%.0f p50_ms=%.3f p99_ms=%.3f'
      % (put['ops_per_sec'], put['p50_ms'], put['p99_ms']))"
done

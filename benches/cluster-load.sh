#!/usr/bin/env bash
# Whole-product throughput and latency: a 3-node `raft-kv cluster` on loopback (RocksDB, every
# log write synced), driven by `raft-bench` at 1, 16, 64 and 256 clients, first writes (PUT),
# then linearizable reads (GET). Prints raft-bench's table per run and a summary table.
#
#   benches/cluster-load.sh                 # gRPC transport, 10 s per run
#   TRANSPORT=quic DURATION=5 benches/cluster-load.sh
#   CLIENTS="1 64" STORAGE=memory benches/cluster-load.sh
set -euo pipefail
cd "$(dirname "$0")/.."

transport="${TRANSPORT:-grpc}"
storage="${STORAGE:-rocksdb}"
duration="${DURATION:-10}"
clients="${CLIENTS:-1 16 64 256}"
base_port="${BASE_PORT:-7400}"
target="${CARGO_TARGET_DIR:-target}"

./dev.sh setup
# The whole workspace, so this build shares its dependencies with `cargo bench`.
cargo build --release --workspace --all-targets

data="$(mktemp -d)"
"$target/release/raft-kv" cluster --nodes 3 --transport "$transport" --storage "$storage" \
    --base-port "$base_port" --data-dir "$data" >"$data/cluster.out" 2>&1 &
cluster_pid=$!
cleanup() {
    kill -INT "$cluster_pid" 2>/dev/null || true
    wait "$cluster_pid" 2>/dev/null || true
    rm -rf "$data"
}
trap cleanup EXIT

for _ in $(seq 1 600); do
    grep -q "nodes are voters" "$data/cluster.out" && break
    if ! kill -0 "$cluster_pid" 2>/dev/null; then
        cat "$data/cluster.out"
        exit 1
    fi
    sleep 0.1
done
grep -q "nodes are voters" "$data/cluster.out" || { cat "$data/cluster.out"; exit 1; }
endpoints="http://127.0.0.1:$((base_port + 101)),http://127.0.0.1:$((base_port + 102)),http://127.0.0.1:$((base_port + 103))"

echo "# raft-kv, 3 nodes, $transport, $storage; $(nproc) cores; ${duration} s per run"
results=()
for mode in write read; do
    ratio=0
    [ "$mode" = read ] && ratio=1
    for n in $clients; do
        echo "## $mode, $n clients"
        line="$("$target/release/raft-bench" --endpoints "$endpoints" --clients "$n" \
            --duration "$duration" --warmup 2 --read-ratio "$ratio" --keys 1000 \
            --value-size 100 | tee /dev/stderr | tail -n 1)"
        results+=("$mode $n $line")
    done
done

echo
echo "| workload | clients | ops/s | p50 ms | p99 ms | p99.9 ms | max ms | errors |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
for r in "${results[@]}"; do
    read -r mode n json <<<"$r"
    python3 - "$mode" "$n" "$json" <<'EOF'
import json, sys
mode, n, j = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
h = j["put"] if mode == "write" else j["get"]
print(f"| {mode} | {n} | {h['ops_per_sec']:.0f} | {h['p50_ms']:.2f} | {h['p99_ms']:.2f} | "
      f"{h['p999_ms']:.2f} | {h['max_ms']:.2f} | {j['errors']} |")
EOF
done

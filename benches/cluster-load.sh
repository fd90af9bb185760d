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

# The leader's proposal and log-write (fsync) counters, from /metrics: "proposals writes".
leader_counters() {
    python3 - "$base_port" <<'EOF'
import json, sys, urllib.request
base = int(sys.argv[1])
status = json.load(urllib.request.urlopen(f"http://127.0.0.1:{base + 101}/status"))
leader = status["leader_id"]
text = urllib.request.urlopen(f"http://127.0.0.1:{base + 100 + leader}/metrics").read().decode()
values = dict(l.rsplit(" ", 1) for l in text.splitlines() if l and not l.startswith("#"))
print(int(float(values["raftkit_proposals_total"])), int(float(values["raftkit_log_writes_total"])))
EOF
}

echo "# raft-kv, 3 nodes, $transport, $storage; $(nproc) cores; ${duration} s per run"
results=()
for mode in write read; do
    ratio=0
    [ "$mode" = read ] && ratio=1
    for n in $clients; do
        echo "## $mode, $n clients"
        read -r proposals_before writes_before <<<"$(leader_counters)"
        line="$("$target/release/raft-bench" --endpoints "$endpoints" --clients "$n" \
            --duration "$duration" --warmup 2 --read-ratio "$ratio" --keys 1000 \
            --value-size 100 | tee /dev/stderr | tail -n 1)"
        read -r proposals_after writes_after <<<"$(leader_counters)"
        proposals=$((proposals_after - proposals_before))
        writes=$((writes_after - writes_before))
        echo "leader: $proposals proposals in $writes log writes (fsyncs) during the run"
        results+=("$mode $n $proposals $writes $line")
    done
done

echo
echo "| workload | clients | ops/s | p50 ms | p99 ms | p99.9 ms | max ms | errors | leader entries per fsync |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for r in "${results[@]}"; do
    read -r mode n proposals writes json <<<"$r"
    python3 - "$mode" "$n" "$proposals" "$writes" "$json" <<'EOF'
import json, sys
mode, n, proposals, writes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
j = json.loads(sys.argv[5])
h = j["put"] if mode == "write" else j["get"]
per = f"{proposals / writes:.1f}" if mode == "write" and writes else "-"
print(f"| {mode} | {n} | {h['ops_per_sec']:.0f} | {h['p50_ms']:.2f} | {h['p99_ms']:.2f} | "
      f"{h['p999_ms']:.2f} | {h['max_ms']:.2f} | {j['errors']} | {per} |")
EOF
done

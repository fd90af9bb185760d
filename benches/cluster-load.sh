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

bin="$target/release"
# shellcheck source=benches/start-cluster.sh
source benches/start-cluster.sh

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
        line="$("$bin/raft-bench" --endpoints "$endpoints" --clients "$n" \
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

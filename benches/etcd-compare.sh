#!/usr/bin/env bash
# raft-kv against etcd, side by side: 3 members each (NODES: others) on loopback, every log write synced
# (raft-kv: RocksDB and gRPC; etcd: its defaults), 100-byte puts, both driven by the same
# load generator (`raft-bench`; `--target etcd` speaks etcd's native gRPC API, KV.Put and
# KV.Range, one HTTP/2 connection per client, as etcd's own `benchmark` tool and its clients
# do; raft-kv gets one keep-alive HTTP/1.1 connection per client). At each client count
# it runs raft-kv then etcd, each on a fresh cluster, so drift on a shared machine hits both
# alike; it measures puts/s, p50/p99 and the servers' CPU time per put (utime + stime of the 3
# server processes, as in server-cpu.sh), then prints one Markdown table. The clusters are
# started by benches/lib-clusters.sh (one `raft-kv serve` per member, as `raft-kv cluster`
# runs them).
#
#   benches/etcd-compare.sh                      # 1, 64 and 256 clients, 10 s per run
#   CLIENTS="1 64" DURATION=3 benches/etcd-compare.sh
#   GETS=1 benches/etcd-compare.sh               # also linearizable gets at the most clients
#   OUT=benches/results benches/etcd-compare.sh  # also writes puts/s, p99 and CPU per put as
#                                                # CSV (series,x,y) for benches/plot.py
#   NODES="3 5" CLIENTS="1 64 256" benches/etcd-compare.sh      # 3 and 5 members each
#   VALUE_SIZES="100 1024 65536" CLIENTS=64 benches/etcd-compare.sh
#
# With several NODES each series is one system at one cluster size (x: clients); with several
# VALUE_SIZES (bytes per value; then one client count) x is the value size. CSV_PREFIX names
# the CSV files apart (`CSV_PREFIX=value-size-`: value-size-puts-per-sec.csv, ...). Every
# combination runs raft-kv then etcd back to back, each on a fresh cluster.
#
# BIN_DIR holds `raft-kv` and `raft-bench` (default: the release target directory; build them
# with `cargo build --release -p raft-kv-example -p raftkit-benches`). etcd comes from the OS
# packages: `apt-get install etcd-server` on Debian/Ubuntu. etcd's endpoints are its client URLs
# (http://127.0.0.1:2379x), where it serves gRPC and, for the readiness check, /health.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v etcd >/dev/null 2>&1; then
    echo "etcd not found: apt-get install etcd-server; skipping"
    exit 0
fi

duration="${DURATION:-10}"
clients="${CLIENTS:-1 64 256}"
gets="${GETS:-0}"
nodes_list="${NODES:-3}"
value_sizes="${VALUE_SIZES:-100}"
base_port="${BASE_PORT:-7600}"
bin="${BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}"
warmup=2

for b in raft-kv raft-bench; do
    [ -x "$bin/$b" ] || { echo "$bin/$b missing: cargo build --release -p raft-kv-example -p raftkit-benches" >&2; exit 1; }
done
# An older raft-bench has no --target, or drives etcd through its JSON gateway.
"$bin/raft-bench" --help | grep -q "etcd 3.4+'s gRPC API" ||
    { echo "$bin/raft-bench has no --target etcd over gRPC: rebuild it" >&2; exit 1; }
command -v curl >/dev/null 2>&1 || { echo "curl is needed to wait for etcd" >&2; exit 1; }

work="$(mktemp -d)"
# shellcheck source=benches/lib-clusters.sh
source benches/lib-clusters.sh
trap 'cleanup; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

# bench SYSTEM MEMBERS VALUE_SIZE CLIENTS RATIO: warms up, then one measured raft-bench run;
# appends "SYSTEM MEMBERS VALUE_SIZE CLIENTS RATIO TICKS JSON" to the results.
bench() {
    local system="$1" nodes="$2" size="$3" n="$4" ratio="$5" before after log
    log="$work/bench-$system-$nodes-$size-$n-$ratio.log"
    # Connections, caches, the leader's first log segments: outside the measurement.
    "$bin/raft-bench" --target "$system" --endpoints "$endpoints" --clients "$n" \
        --duration "$warmup" --warmup 0 --read-ratio "$ratio" --keys 1000 --value-size "$size" \
        >/dev/null
    before="$(ticks)"
    "$bin/raft-bench" --target "$system" --endpoints "$endpoints" --clients "$n" \
        --duration "$duration" --warmup 0 --read-ratio "$ratio" --keys 1000 --value-size "$size" \
        >"$log"
    after="$(ticks)"
    sed '$d' "$log"
    echo "$system $nodes $size $n $ratio $((after - before)) $(tail -n 1 "$log")" >>"$work/results"
}

largest=0
for n in $clients; do
    if [ "$n" -gt "$largest" ]; then largest="$n"; fi
done

if [ "$(wc -w <<<"$value_sizes")" -gt 1 ] && [ "$(wc -w <<<"$clients")" -gt 1 ]; then
    echo "several VALUE_SIZES take one client count (CLIENTS)" >&2
    exit 1
fi

echo "# raft-kv (gRPC, RocksDB) vs $(etcd --version | sed -n "s/^etcd Version: /etcd /p"); $nodes_list members each on loopback;" \
    "$(nproc) cores; ${duration} s per run after ${warmup} s warmup; $value_sizes B values, 1000 keys"
: >"$work/results"
run=0
for nodes in $nodes_list; do
    for size in $value_sizes; do
        for n in $clients; do
            for system in raft-kv etcd; do
                run=$((run + 1))
                echo
                echo "## $system, $nodes members, $size B values, $n clients, puts"
                start_cluster "$system" "$work/run-$run" "$nodes"
                bench "$system" "$nodes" "$size" "$n" 0
                if [ "$gets" = 1 ] && [ "$n" = "$largest" ]; then
                    # On the same cluster: the put run has written the keys.
                    echo "## $system, $n clients, linearizable gets"
                    bench "$system" "$nodes" "$size" "$n" 1
                fi
                cleanup
                rm -rf "$work/run-$run"
            done
        done
    done
done

echo
python3 - "$work/results" "$(getconf CLK_TCK)" "${OUT:-}" "${CSV_PREFIX:-}" <<'EOF'
import json, os, sys
hz = int(sys.argv[2])
out, prefix = sys.argv[3], sys.argv[4]
# (members, value size, clients, ratio) -> system -> (histogram, cpu µs per op, errors)
rows = {}
for line in open(sys.argv[1]):
    system, nodes, size, n, ratio, ticks, js = line.split(" ", 6)
    j = json.loads(js)
    h = j["get"] if float(ratio) > 0 else j["put"]
    cpu = int(ticks) * 1e6 / hz / h["ops"] if h["ops"] else float("nan")
    rows.setdefault((int(nodes), int(size), int(n), float(ratio)), {})[system] = (h, cpu, j["errors"])
several_nodes = len({k[0] for k in rows}) > 1
several_sizes = len({k[1] for k in rows}) > 1
print("ratio = raft-kv / etcd throughput; CPU = utime + stime of the servers per operation")
print()
extra = (["members"] if several_nodes else []) + (["value B"] if several_sizes else [])
print("| " + " | ".join(extra + ["clients"]) + " | raft-kv puts/s | etcd puts/s | ratio "
      "| raft-kv p50/p99 ms | etcd p50/p99 ms | CPU µs/put raft-kv | etcd |")
print("|" + "---:|" * (len(extra) + 8))
notes = []
for (nodes, size, n, ratio), r in sorted(rows.items()):
    label = f"{n}" if ratio == 0 else f"{n}, gets"
    cells = ([str(nodes)] if several_nodes else []) + ([str(size)] if several_sizes else [])
    cells.append(label)
    for s in ("raft-kv", "etcd"):
        cells.append(f"{r[s][0]['ops_per_sec']:.0f}" if s in r else "-")
    if "raft-kv" in r and "etcd" in r and r["etcd"][0]["ops_per_sec"]:
        cells.append(f"{r['raft-kv'][0]['ops_per_sec'] / r['etcd'][0]['ops_per_sec']:.2f}")
    else:
        cells.append("-")
    for s in ("raft-kv", "etcd"):
        cells.append(f"{r[s][0]['p50_ms']:.2f} / {r[s][0]['p99_ms']:.2f}" if s in r else "-")
    for s in ("raft-kv", "etcd"):
        cells.append(f"{r[s][1]:.0f}" if s in r else "-")
    for s in ("raft-kv", "etcd"):
        if s in r and r[s][2]:
            notes.append(f"{s}, {nodes} members, {size} B, {label} clients: {r[s][2]} errors")
    print("| " + " | ".join(cells) + " |")
if any(k[3] > 0 for k in rows):
    print()
    print("Rows marked \"gets\": linearizable gets/s, their latency and CPU µs per get.")
for note in notes:
    print(f"WARNING: {note} (see the run's output above)")
if out:
    # One series per system (and cluster size, with several); x: clients, or the value size.
    os.makedirs(out, exist_ok=True)
    names = {"raft-kv": "raft-kv", "etcd": "etcd 3.4"}
    for file, value in (
        ("puts-per-sec", lambda h, cpu: h["ops_per_sec"]),
        ("p99-ms", lambda h, cpu: h["p99_ms"]),
        ("cpu-us-per-put", lambda h, cpu: cpu),
    ):
        with open(os.path.join(out, f"{prefix}{file}.csv"), "w") as f:
            f.write("series,x,y\n")
            for nodes in sorted({k[0] for k in rows}):
                for s in ("raft-kv", "etcd"):
                    name = names[s] + (f" ({nodes} members)" if several_nodes else "")
                    for (m, size, n, ratio), r in sorted(rows.items()):
                        if m == nodes and ratio == 0 and s in r:
                            x = size if several_sizes else n
                            f.write(f"{name},{x},{value(r[s][0], r[s][1])}\n")
EOF

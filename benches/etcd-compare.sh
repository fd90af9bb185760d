#!/usr/bin/env bash
# raft-kv against etcd, side by side: 3 members each on loopback, every log write synced
# (raft-kv: RocksDB and gRPC; etcd: its defaults), 100-byte puts, both driven by the same
# load generator (`raft-bench`; `--target etcd` speaks etcd's native gRPC API, KV.Put and
# KV.Range, one HTTP/2 connection per client, as etcd's own `benchmark` tool and its clients
# do; raft-kv gets one keep-alive HTTP/1.1 connection per client). At each client count
# it runs raft-kv then etcd, each on a fresh cluster, so drift on a shared machine hits both
# alike; it measures puts/s, p50/p99 and the servers' CPU time per put (utime + stime of the 3
# server processes, as in server-cpu.sh), then prints one Markdown table.
#
#   benches/etcd-compare.sh                      # 1, 64 and 256 clients, 10 s per run
#   CLIENTS="1 64" DURATION=3 benches/etcd-compare.sh
#   GETS=1 benches/etcd-compare.sh               # also linearizable gets at the most clients
#   OUT=benches/results benches/etcd-compare.sh  # also writes puts/s, p99 and CPU per put as
#                                                # CSV (series,x,y) for benches/plot.py
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
base_port="${BASE_PORT:-7600}"
bin="${BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}"
etcd_client_port=23791 # members 1-3: 23791-23793
etcd_peer_port=23801   # members 1-3: 23801-23803
warmup=2

for b in raft-kv raft-bench; do
    [ -x "$bin/$b" ] || { echo "$bin/$b missing: cargo build --release -p raft-kv-example -p raftkit-benches" >&2; exit 1; }
done
# An older raft-bench has no --target, or drives etcd through its JSON gateway.
"$bin/raft-bench" --help | grep -q "etcd 3.4+'s gRPC API" ||
    { echo "$bin/raft-bench has no --target etcd over gRPC: rebuild it" >&2; exit 1; }
command -v curl >/dev/null 2>&1 || { echo "curl is needed to wait for etcd" >&2; exit 1; }

work="$(mktemp -d)"
server_pids=""  # the 3 server processes of the cluster running now
cluster_pid=""  # raft-kv: `raft-kv cluster`, the servers' parent (etcd: none)
# Stops the cluster running now, if any.
cleanup() {
    local pid
    if [ -n "$cluster_pid" ]; then
        # `raft-kv cluster` stops its servers on Ctrl-C; they are its children, not ours.
        kill -INT "$cluster_pid" 2>/dev/null || true
        wait "$cluster_pid" 2>/dev/null || true
        for pid in $server_pids; do
            for _ in $(seq 1 100); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
        done
    else
        for pid in $server_pids; do
            kill "$pid" 2>/dev/null || true
        done
        for pid in $server_pids; do
            wait "$pid" 2>/dev/null || true
        done
    fi
    server_pids=""
    cluster_pid=""
}
trap 'cleanup; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

# Sets `server_pids` and `endpoints`; the cluster's files go under $1.
start_raftkv() {
    local dir="$1" pid
    mkdir -p "$dir"
    "$bin/raft-kv" cluster --nodes 3 --transport grpc --storage rocksdb \
        --base-port "$base_port" --data-dir "$dir" >"$dir/cluster.out" 2>&1 &
    cluster_pid=$!
    for _ in $(seq 1 600); do
        grep -q "nodes are voters" "$dir/cluster.out" && break
        kill -0 "$cluster_pid" 2>/dev/null || break
        sleep 0.1
    done
    grep -q "nodes are voters" "$dir/cluster.out" || { cat "$dir/cluster.out"; exit 1; }
    server_pids="$(pgrep -f -- "--data-dir $dir/node-" | tr '\n' ' ')"
    [ "$(wc -w <<<"$server_pids")" -eq 3 ] ||
        { echo "expected 3 raft-kv servers, found: $server_pids" >&2; exit 1; }
    for pid in $server_pids; do
        [ "$(ps -o ppid= -p "$pid" | tr -d ' ')" = "$cluster_pid" ] ||
            { echo "raft-kv server $pid is not ours" >&2; exit 1; }
    done
    endpoints="http://127.0.0.1:$((base_port + 101)),http://127.0.0.1:$((base_port + 102)),http://127.0.0.1:$((base_port + 103))"
}

# Sets `server_pids` and `endpoints`; the members' data directories go under $1.
start_etcd() {
    local dir="$1" i initial="" token
    token="raftkit-bench-$(basename "$dir")-$$"
    mkdir -p "$dir"
    for i in 1 2 3; do
        initial+="${initial:+,}m$i=http://127.0.0.1:$((etcd_peer_port + i - 1))"
    done
    endpoints=""
    for i in 1 2 3; do
        local client="http://127.0.0.1:$((etcd_client_port + i - 1))"
        local peer="http://127.0.0.1:$((etcd_peer_port + i - 1))"
        # Default fsync behaviour (no --unsafe-no-fsync), default snapshot count; an 8 GiB
        # backend quota (etcd's maximum) so no run can raise the space alarm; errors-only logs.
        etcd --name "m$i" --data-dir "$dir/m$i" \
            --listen-client-urls "$client" --advertise-client-urls "$client" \
            --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
            --initial-cluster "$initial" --initial-cluster-state new \
            --initial-cluster-token "$token" \
            --quota-backend-bytes 8589934592 --logger zap --log-level error \
            >"$dir/m$i.out" 2>&1 &
        server_pids+="$! "
        endpoints+="${endpoints:+,}$client"
    done
    local url ready
    for _ in $(seq 1 300); do
        ready=0
        for url in ${endpoints//,/ }; do
            if curl -fsS --max-time 1 "$url/health" 2>/dev/null | grep -q '"health":"true"'; then
                ready=$((ready + 1))
            fi
        done
        [ "$ready" -eq 3 ] && return 0
        for pid in $server_pids; do
            kill -0 "$pid" 2>/dev/null || { cat "$dir"/m*.out; exit 1; }
        done
        sleep 0.1
    done
    echo "etcd did not become healthy" >&2
    cat "$dir"/m*.out
    exit 1
}

# utime + stime of the servers, in clock ticks.
ticks() {
    local total=0 pid
    for pid in $server_pids; do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    echo "$total"
}

# bench SYSTEM CLIENTS RATIO: warms up, then one measured raft-bench run; appends
# "SYSTEM CLIENTS RATIO TICKS JSON" to the results.
bench() {
    local system="$1" n="$2" ratio="$3" before after log
    log="$work/bench-$system-$n-$ratio.log"
    # Connections, caches, the leader's first log segments: outside the measurement.
    "$bin/raft-bench" --target "$system" --endpoints "$endpoints" --clients "$n" \
        --duration "$warmup" --warmup 0 --read-ratio "$ratio" --keys 1000 --value-size 100 \
        >/dev/null
    before="$(ticks)"
    "$bin/raft-bench" --target "$system" --endpoints "$endpoints" --clients "$n" \
        --duration "$duration" --warmup 0 --read-ratio "$ratio" --keys 1000 --value-size 100 \
        >"$log"
    after="$(ticks)"
    sed '$d' "$log"
    echo "$system $n $ratio $((after - before)) $(tail -n 1 "$log")" >>"$work/results"
}

largest=0
for n in $clients; do
    if [ "$n" -gt "$largest" ]; then largest="$n"; fi
done

echo "# raft-kv (gRPC, RocksDB) vs $(etcd --version | sed -n "s/^etcd Version: /etcd /p"); 3 members each on loopback;" \
    "$(nproc) cores; ${duration} s per run after ${warmup} s warmup; 100 B values, 1000 keys"
: >"$work/results"
run=0
for n in $clients; do
    for system in raft-kv etcd; do
        run=$((run + 1))
        echo
        echo "## $system, $n clients, puts"
        if [ "$system" = raft-kv ]; then
            start_raftkv "$work/run-$run"
        else
            start_etcd "$work/run-$run"
        fi
        bench "$system" "$n" 0
        if [ "$gets" = 1 ] && [ "$n" = "$largest" ]; then
            # On the same cluster: the put run has written the keys.
            echo "## $system, $n clients, linearizable gets"
            bench "$system" "$n" 1
        fi
        cleanup
        rm -rf "$work/run-$run"
    done
done

echo
python3 - "$work/results" "$(getconf CLK_TCK)" "${OUT:-}" <<'EOF'
import json, os, sys
hz = int(sys.argv[2])
out = sys.argv[3]
rows = {}  # (clients, ratio) -> system -> (histogram, cpu µs per op, errors)
for line in open(sys.argv[1]):
    system, n, ratio, ticks, js = line.split(" ", 4)
    j = json.loads(js)
    h = j["get"] if float(ratio) > 0 else j["put"]
    cpu = int(ticks) * 1e6 / hz / h["ops"] if h["ops"] else float("nan")
    rows.setdefault((int(n), float(ratio)), {})[system] = (h, cpu, j["errors"])
print("ratio = raft-kv / etcd throughput; CPU = utime + stime of the 3 servers per operation")
print()
print("| clients | raft-kv puts/s | etcd puts/s | ratio | raft-kv p50/p99 ms | etcd p50/p99 ms "
      "| CPU µs/put raft-kv | etcd |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|")
notes = []
for (n, ratio), r in sorted(rows.items()):
    label = f"{n}" if ratio == 0 else f"{n}, gets"
    cells = [label]
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
            notes.append(f"{s}, {label} clients: {r[s][2]} errors")
    print("| " + " | ".join(cells) + " |")
if any(ratio > 0 for _, ratio in rows):
    print()
    print("Rows marked \"gets\": linearizable gets/s, their latency and CPU µs per get.")
for note in notes:
    print(f"WARNING: {note} (see the run's output above)")
if out:
    os.makedirs(out, exist_ok=True)
    names = {"raft-kv": "raft-kv", "etcd": "etcd 3.4"}
    for file, value in (
        ("puts-per-sec", lambda h, cpu: h["ops_per_sec"]),
        ("p99-ms", lambda h, cpu: h["p99_ms"]),
        ("cpu-us-per-put", lambda h, cpu: cpu),
    ):
        with open(os.path.join(out, f"{file}.csv"), "w") as f:
            f.write("series,x,y\n")
            for s in ("raft-kv", "etcd"):
                for (n, ratio), r in sorted(rows.items()):
                    if ratio == 0 and s in r:
                        f.write(f"{names[s]},{n},{value(r[s][0], r[s][1])}\n")
EOF

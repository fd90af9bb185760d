#!/usr/bin/env bash
# Restart time and memory against the amount of state, raft-kv beside etcd. For each key count
# N, on a fresh 3-member cluster of each system (benches/lib-clusters.sh: raft-kv with gRPC and
# RocksDB, etcd with its defaults, every log write synced), raft-kv then etcd:
#
# 1. load: `raft-bench --load` writes N keys of 100 B, each once (256 clients), then 2 s of rest;
# 2. memory: VmRSS of the 3 servers (/proc/PID/status), summed and the largest;
# 3. a follower's state: its data directory's size on disk and its log position (raft-kv:
#    last log index and snapshots taken, from /status and /metrics; etcd: raft index and the
#    .snap files it holds, from its maintenance status);
# 4. restart: SIGKILL that follower (a crash: no clean shutdown), start it again with the same
#    flags (etcd adds --initial-cluster-state existing), and time from the start of the process
#    until it is ready (raft-kv: /ready, a member that knows the leader and has applied what it
#    knows committed; etcd: /health, a leader and a quorum read through raft), then until it
#    answers a linearizable read of the last key loaded (raft-kv: GET /kv/bench-{N-1}; etcd:
#    KV.Range through its JSON gateway), both polled every 20 ms. Reads wait for readiness: a
#    raft-kv follower that does not know the leader yet drops a ReadIndex and asks again after
#    read_retry_interval (300 ms), which would measure that interval rather than the restart.
#    No writes arrive while it is down: this is the cost of recovering its own state (opening
#    the log, replaying it or the snapshot into the state machine) and rejoining.
#
# Prints one Markdown table.
#
#   benches/state-curves.sh                       # 10k, 100k, 300k and 1M keys
#   KEYS="10000 100000" benches/state-curves.sh
#   OUT=benches/results benches/state-curves.sh   # also writes restart-seconds.csv and
#                                                 # memory-rss-mib.csv (series,x,y)
#
# BIN_DIR holds `raft-kv` and `raft-bench` (default: the release target directory; build them
# with `cargo build --release -p raft-kv-example -p raftkit-benches`); etcd comes from the OS
# packages (`apt-get install etcd-server`).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v etcd >/dev/null 2>&1; then
    echo "etcd not found: apt-get install etcd-server; skipping"
    exit 0
fi

key_counts="${KEYS:-10000 100000 300000 1000000}"
load_clients="${LOAD_CLIENTS:-256}"
base_port="${BASE_PORT:-7600}"
bin="${BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}"

for b in raft-kv raft-bench; do
    [ -x "$bin/$b" ] || { echo "$bin/$b missing: cargo build --release -p raft-kv-example -p raftkit-benches" >&2; exit 1; }
done
"$bin/raft-bench" --help | grep -q -- "--load" ||
    { echo "$bin/raft-bench has no --load: rebuild it" >&2; exit 1; }
command -v curl >/dev/null 2>&1 || { echo "curl is needed" >&2; exit 1; }

work="$(mktemp -d)"
# shellcheck source=benches/lib-clusters.sh
source benches/lib-clusters.sh
trap 'cleanup; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

# follower_log I: member I's log position, as "field=value ..." words.
follower_log() {
    local url="${member_url[$1]}"
    if [ "$cluster_system" = raft-kv ]; then
        echo "last_log_index=$(curl -fsS "$url/status" |
            python3 -c 'import json, sys; print(json.load(sys.stdin)["last_log_index"])')" \
            "snapshots_taken=$(curl -fsS "$url/metrics" | awk '$1 == "raftkit_snapshots_taken_total" {print $2}')"
    else
        echo "raft_index=$(curl -fsS -X POST -d '{}' "$url/v3/maintenance/status" |
            python3 -c 'import json, sys; print(json.load(sys.stdin)["raftIndex"])')" \
            "snap_files=$(find "$(member_dir "$1")/member/snap" -name '*.snap' | wc -l)"
    fi
}

# read_last I N: whether member I answers a linearizable read of the last key loaded.
read_last() {
    local url="${member_url[$1]}" key="bench-$(($2 - 1))"
    if [ "$cluster_system" = raft-kv ]; then
        curl -fsS --max-time 1 "$url/kv/$key" >/dev/null 2>&1
    else
        curl -fsS --max-time 1 -X POST -d "{\"key\":\"$(printf %s "$key" | base64)\"}" \
            "$url/v3/kv/range" 2>/dev/null | grep -q '"kvs"'
    fi
}

now_ns() { date +%s%N; }

echo "# restart time and memory against key count: raft-kv (gRPC, RocksDB) vs" \
    "$(etcd --version | sed -n "s/^etcd Version: /etcd /p"); 3 members each on loopback;" \
    "$(nproc) cores; 100 B values, loaded with $load_clients clients"
: >"$work/results"
run=0
for keys in $key_counts; do
    for system in raft-kv etcd; do
        run=$((run + 1))
        echo
        echo "## $system, $keys keys"
        start_cluster "$system" "$work/run-$run" 3
        "$bin/raft-bench" --target "$system" --endpoints "$endpoints" --clients "$load_clients" \
            --keys "$keys" --value-size 100 --load >"$work/load.log"
        sed '$d' "$work/load.log"
        load_json="$(tail -n 1 "$work/load.log")"
        sleep 2
        rss_sum=0
        rss_max=0
        for pid in $server_pids; do
            r="$(rss_kib "$pid")"
            rss_sum=$((rss_sum + r))
            [ "$r" -gt "$rss_max" ] && rss_max="$r"
        done
        leader="$(leader_member)"
        [ -n "$leader" ] || { echo "no leader" >&2; exit 1; }
        follower=$((leader % 3 + 1))
        log_info="$(follower_log "$follower")"
        disk_kib="$(du -sk "$(member_dir "$follower")" | cut -f1)"
        echo "servers' RSS: sum $((rss_sum / 1024)) MiB, largest $((rss_max / 1024)) MiB;" \
            "follower $follower (leader $leader): $((disk_kib / 1024)) MiB on disk, $log_info"
        stop_member "$follower" KILL
        t0="$(now_ns)"
        start_member "$follower" existing
        ready=""
        answered=""
        for _ in $(seq 1 3000); do
            if [ -z "$ready" ] && member_ready "$follower"; then
                ready="$(now_ns)"
            fi
            if [ -n "$ready" ] && read_last "$follower" "$keys"; then
                answered="$(now_ns)"
                break
            fi
            kill -0 "${member_pids[$follower]}" 2>/dev/null ||
                { echo "the restarted member exited" >&2; tail -n 20 "$work/run-$run"/*.log "$work/run-$run"/*.out 2>/dev/null; exit 1; }
            sleep 0.02
        done
        [ -n "$answered" ] || { echo "the restarted member did not answer" >&2; exit 1; }
        ready_ms=$(((ready - t0) / 1000000))
        restart_ms=$(((answered - t0) / 1000000))
        rss_after="$(rss_kib "${member_pids[$follower]}")"
        echo "restart: ready after $ready_ms ms, a linearizable read through it after $restart_ms ms;" \
            "its RSS then $((rss_after / 1024)) MiB"
        echo "$system $keys $rss_sum $rss_max $disk_kib $ready_ms $restart_ms $rss_after $log_info $load_json" >>"$work/results"
        cleanup
        rm -rf "$work/run-$run"
    done
done

echo
python3 - "$work/results" "${OUT:-}" <<'EOF'
import json, os, sys
out = sys.argv[2]
rows = {}  # keys -> system -> fields
for line in open(sys.argv[1]):
    words = line.split()
    system, keys, rss_sum, rss_max, disk, ready_ms, restart_ms, rss_after = words[:8]
    log = dict(w.split("=", 1) for w in words[8:10])
    load = json.loads(" ".join(words[10:]))
    rows.setdefault(int(keys), {})[system] = {
        "rss_sum": int(rss_sum) / 1024, "rss_max": int(rss_max) / 1024,
        "disk": int(disk) / 1024, "ready": int(ready_ms) / 1000, "restart": int(restart_ms) / 1000,
        "rss_after": int(rss_after) / 1024, "log": log, "load": load,
    }

def ratio(r, field):
    if "raft-kv" in r and "etcd" in r and r["etcd"][field]:
        return f"{r['raft-kv'][field] / r['etcd'][field]:.2f}"
    return "-"

def cell(r, s, field, fmt):
    return fmt.format(r[s][field]) if s in r else "-"

print("ratio = raft-kv / etcd; RSS = VmRSS of the 3 servers after the load; restart = SIGKILL of")
print("a follower, then process start to its first linearizable read (ready: to /ready, /health)")
print()
print("| keys | restart s raft-kv | etcd | ratio | ready s raft-kv | etcd "
      "| RSS MiB (sum of 3) raft-kv | etcd | ratio "
      "| follower on disk MiB raft-kv | etcd | load puts/s raft-kv | etcd |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for keys, r in sorted(rows.items()):
    cells = [f"{keys}"]
    cells += [cell(r, s, "restart", "{:.2f}") for s in ("raft-kv", "etcd")] + [ratio(r, "restart")]
    cells += [cell(r, s, "ready", "{:.2f}") for s in ("raft-kv", "etcd")]
    cells += [cell(r, s, "rss_sum", "{:.0f}") for s in ("raft-kv", "etcd")] + [ratio(r, "rss_sum")]
    cells += [cell(r, s, "disk", "{:.0f}") for s in ("raft-kv", "etcd")]
    cells += [f"{r[s]['load']['put']['ops_per_sec']:.0f}" if s in r else "-" for s in ("raft-kv", "etcd")]
    print("| " + " | ".join(cells) + " |")
print()
print("Follower's log at the kill, and its RSS once it answered again:")
for keys, r in sorted(rows.items()):
    for s in ("raft-kv", "etcd"):
        if s in r:
            log = ", ".join(f"{k} {v}" for k, v in r[s]["log"].items())
            errors = r[s]["load"]["errors"]
            print(f"- {keys} keys, {s}: {log}; RSS after restart {r[s]['rss_after']:.0f} MiB"
                  f" (largest before {r[s]['rss_max']:.0f}); load errors {errors}")
if out:
    os.makedirs(out, exist_ok=True)
    names = {"raft-kv": "raft-kv", "etcd": "etcd 3.4"}
    for file, field in (("restart-seconds", "restart"), ("memory-rss-mib", "rss_sum")):
        with open(os.path.join(out, f"{file}.csv"), "w") as f:
            f.write("series,x,y\n")
            for s in ("raft-kv", "etcd"):
                for keys, r in sorted(rows.items()):
                    if s in r:
                        f.write(f"{names[s]},{keys},{r[s][field]}\n")
EOF

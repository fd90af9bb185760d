#!/usr/bin/env bash
# Peak memory and catch-up time with a large state. One raft-kv node (RocksDB, gRPC, fsync on)
# is loaded with STATE_MIB MiB of values and takes snapshots as it goes; then a second node
# joins and catches up from the snapshot. It prints, as multiples of the state's size:
#   - the leader's peak RSS (VmHWM) through the load and its snapshots,
#   - the leader's peak RSS once it has also sent the snapshot,
#   - the new node's peak RSS through receiving and installing it,
# and the new node's catch-up time against the time to copy the same number of bytes over
# loopback TCP (measured in the same run).
#
#   cargo build --release -p raft-kv-example
#   STATE_MIB=200 benches/snapshot-memory.sh
#   BIN_DIR=/path/to/an/older/build STATE_MIB=200 benches/snapshot-memory.sh   # "before"
#
# VALUE_KIB (default 64) sets the size of each value: STATE_MIB * 1024 / VALUE_KIB keys.
# SERVE_ARGS adds flags to both nodes' `raft-kv serve` (say, `--watch-history-bytes 0`).
# RSS_TRACE=FILE also writes both nodes' RSS every 0.2 s (seconds, leader MiB, new node MiB).
set -euo pipefail
cd "$(dirname "$0")/.."

state_mib="${STATE_MIB:-200}"
value_kib="${VALUE_KIB:-64}"
bin="${BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}"
base_port="${BASE_PORT:-7700}"
keys=$((state_mib * 1024 / value_kib))

[ -x "$bin/raft-kv" ] || { echo "$bin/raft-kv missing: cargo build --release -p raft-kv-example" >&2; exit 1; }
for tool in curl python3; do
    command -v "$tool" >/dev/null 2>&1 || { echo "$tool is needed" >&2; exit 1; }
done

work="$(mktemp -d)"
pids=""
cleanup() {
    local pid
    for pid in $pids; do kill "$pid" 2>/dev/null || true; done
    for pid in $pids; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

http() { echo "http://127.0.0.1:$((base_port + 100 + $1))"; }

# Starts node $1 (further arguments go to `raft-kv serve`); sets `last_pid`.
serve() {
    local id="$1"
    shift
    "$bin/raft-kv" serve --id "$id" --transport grpc --storage rocksdb \
        --raft-addr "127.0.0.1:$((base_port + id))" --http-addr "127.0.0.1:$((base_port + 100 + id))" \
        --data-dir "$work/node-$id" --snapshot-threshold $((keys / 2)) ${SERVE_ARGS:-} "$@" \
        >"$work/node-$id.out" 2>&1 &
    last_pid=$!
    pids+="$last_pid "
}

# status_field NODE FIELD: a number from the node's /status.
status_field() {
    curl -sf "$(http "$1")/status" | python3 -c "import json,sys; print(json.load(sys.stdin).get('$2') or 0)"
}

peak_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
    local limit="$1" what="$2"
    shift 2
    for _ in $(seq 1 $((limit * 10))); do
        "$@" && return 0
        sleep 0.1
    done
    echo "timed out waiting for $what" >&2
    tail -20 "$work"/node-*.out >&2
    exit 1
}

leads() { [ "$(curl -sf "$(http 1)/status" 2>/dev/null | python3 -c "import json,sys; print(json.load(sys.stdin)['role'])" 2>/dev/null)" = leader ]; }
snapshotted() { curl -sf "$(http 1)/metrics" | grep -Eq '^raftkit_snapshots_taken(_total)? [1-9]'; }
caught_up() {
    local target
    target="$(status_field 1 applied_index)"
    [ "$(status_field 2 applied_index 2>/dev/null || echo 0)" -ge "$target" ]
}

serve 1
leader_pid="$last_pid"
wait_for 60 "node 1 to lead" leads

rss_mib() { awk '/^VmRSS:/ {printf "%.0f", $2 / 1024}' "/proc/$1/status" 2>/dev/null || echo 0; }
if [ -n "${RSS_TRACE:-}" ]; then
    (
        start=$(date +%s.%N)
        while kill -0 "$leader_pid" 2>/dev/null; do
            joiner="$(pgrep -f -- "--id 2 .*--data-dir $work/" | head -1 || true)"
            echo "$(awk -v s="$start" -v n="$(date +%s.%N)" 'BEGIN {printf "%.1f", n - s}') $(rss_mib "$leader_pid") $([ -n "$joiner" ] && rss_mib "$joiner" || echo 0)"
            sleep 0.2
        done
    ) >"$RSS_TRACE" &
    pids+="$! "
fi

head -c $((value_kib * 1024)) /dev/urandom >"$work/value"
echo "loading $keys values of $value_kib KiB ($state_mib MiB) into node 1..."
started=$(date +%s.%N)
seq 1 "$keys" | xargs -P 8 -I{} curl -sf -X PUT --data-binary @"$work/value" \
    -o /dev/null "$(http 1)/kv/key-{}"
loaded=$(date +%s.%N)
wait_for 300 "a snapshot on node 1" snapshotted
leader_after_snapshot=$(peak_kib "$leader_pid")

echo "node 2 joins..."
join_started=$(date +%s.%N)
serve 2 --join "127.0.0.1:$((base_port + 1))"
joiner_pid="$last_pid"
wait_for 900 "node 2 to catch up" caught_up
caught=$(date +%s.%N)
leader_after_send=$(peak_kib "$leader_pid")
joiner_peak=$(peak_kib "$joiner_pid")

# The same number of bytes over loopback TCP, 1 MiB writes, for the catch-up comparison.
copy_seconds=$(python3 - "$state_mib" <<'EOF'
import socket, sys, threading, time
total = int(sys.argv[1]) << 20
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(1)
def drain():
    conn, _ = server.accept()
    got = 0
    while got < total:
        data = conn.recv(1 << 20)
        if not data:
            break
        got += len(data)
    conn.close()
reader = threading.Thread(target=drain)
reader.start()
chunk = b"\0" * (1 << 20)
client = socket.create_connection(server.getsockname())
start = time.monotonic()
sent = 0
while sent < total:
    client.sendall(chunk)
    sent += len(chunk)
client.close()
reader.join()
print(f"{time.monotonic() - start:.3f}")
EOF
)

python3 - "$state_mib" "$leader_after_snapshot" "$leader_after_send" "$joiner_peak" \
    "$started" "$loaded" "$join_started" "$caught" "$copy_seconds" "$bin" <<'EOF'
import sys
state, lead_snap, lead_send, joiner = (int(x) for x in sys.argv[1:5])
started, loaded, join_started, caught, copy = (float(x) for x in sys.argv[5:10])
state_kib = state * 1024
def mib(kib):
    return f"{kib / 1024:.0f} MiB ({kib / state_kib:.2f}x)"
print(f"binaries: {sys.argv[10]}; state {state} MiB, loaded in {loaded - started:.1f} s")
print("| state | leader peak, load + snapshots | leader peak, after sending | new node peak | "
      "catch-up | loopback copy | catch-up / copy |")
print("|---:|---:|---:|---:|---:|---:|---:|")
catch = caught - join_started
print(f"| {state} MiB | {mib(lead_snap)} | {mib(lead_send)} | {mib(joiner)} | "
      f"{catch:.1f} s | {copy:.2f} s | {catch / copy:.1f} |")
EOF

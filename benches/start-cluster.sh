# Sourced by the load scripts: starts `raft-kv cluster` (3 nodes) in the background and
# waits until all are voters. Needs `bin`, `transport`, `storage` and `base_port` set; sets
# `data` (the cluster's directory, removed on exit), `cluster_pid` and `endpoints`, and
# defines `is_leader URL`.

data="$(mktemp -d)"
"$bin/raft-kv" cluster --nodes 3 --transport "$transport" --storage "$storage" \
    --base-port "$base_port" --data-dir "$data" >"$data/cluster.out" 2>&1 &
cluster_pid=$!
stop_cluster() {
    kill -INT "$cluster_pid" 2>/dev/null || true
    wait "$cluster_pid" 2>/dev/null || true
    rm -rf "$data"
}
trap stop_cluster EXIT

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

# is_leader URL: true when the node serving URL says it leads.
is_leader() { curl -fsS --max-time 2 "$1/status" | grep -q '"role":"leader"'; }

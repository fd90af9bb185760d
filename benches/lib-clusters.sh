# shellcheck shell=bash
# Sourced by benches/etcd-compare.sh and benches/state-curves.sh: starts, stops and restarts
# raft-kv and etcd clusters of N members (3 or 5) on loopback, one process per member, all of
# them children of the calling shell (so one member can be killed and started again).
#
# raft-kv: each member is `raft-kv serve` with the flags `raft-kv cluster` gives its nodes
# (gRPC transport, RocksDB log, member i's raft port base+i and HTTP port base+100+i, one
# --initial-cluster); etcd (from the OS packages): member i on client port 23790+i and peer
# port 23800+i, fsync on (no --unsafe-no-fsync), default snapshot count, an 8 GiB backend quota
# (etcd's maximum) so no run raises the space alarm, errors-only logs.
#
# Needs `bin` (holds raft-kv) and `base_port` set. After a start: `members` (how many),
# `member_pids[i]` (i = 1..members), `server_pids` (all of them, space-separated), `endpoints`
# (comma-separated client URLs) and `member_url[i]`. `cleanup` stops whatever runs.

: "${bin:?}" "${base_port:?}"
etcd_client_port=23791 # member i: 23790+i
etcd_peer_port=23801   # member i: 23800+i
members=0
member_pids=()
member_url=()
server_pids=""
endpoints=""
cluster_dir=""    # the running cluster's files
cluster_system="" # raft-kv or etcd

# member_url_of SYSTEM I: member I's client URL.
member_url_of() {
    if [ "$1" = raft-kv ]; then
        echo "http://127.0.0.1:$((base_port + 100 + $2))"
    else
        echo "http://127.0.0.1:$((etcd_client_port + $2 - 1))"
    fi
}

# member_dir I: member I's data directory.
member_dir() {
    if [ "$cluster_system" = raft-kv ]; then
        echo "$cluster_dir/node-$1"
    else
        echo "$cluster_dir/m$1"
    fi
}

# start_member I [existing]: starts member I of the cluster described by cluster_system,
# cluster_dir and members; "existing" restarts it on the data it has (etcd:
# --initial-cluster-state existing; raft-kv ignores --initial-cluster when it has state).
start_member() {
    local i="$1" state="${2:-new}" j initial=""
    if [ "$cluster_system" = raft-kv ]; then
        for j in $(seq 1 "$members"); do
            initial+="${initial:+,}$j=127.0.0.1:$((base_port + j))"
        done
        "$bin/raft-kv" serve --id "$i" \
            --raft-addr "127.0.0.1:$((base_port + i))" \
            --http-addr "127.0.0.1:$((base_port + 100 + i))" \
            --data-dir "$(member_dir "$i")" --transport grpc --storage rocksdb \
            --initial-cluster "$initial" >>"$cluster_dir/node-$i.log" 2>&1 &
    else
        for j in $(seq 1 "$members"); do
            initial+="${initial:+,}m$j=http://127.0.0.1:$((etcd_peer_port + j - 1))"
        done
        local client peer
        client="$(member_url_of etcd "$i")"
        peer="http://127.0.0.1:$((etcd_peer_port + i - 1))"
        etcd --name "m$i" --data-dir "$(member_dir "$i")" \
            --listen-client-urls "$client" --advertise-client-urls "$client" \
            --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
            --initial-cluster "$initial" --initial-cluster-state "$state" \
            --initial-cluster-token "raftkit-bench-$(basename "$cluster_dir")-$$" \
            --quota-backend-bytes 8589934592 --logger zap --log-level error \
            >>"$cluster_dir/m$i.out" 2>&1 &
    fi
    member_pids[i]=$!
    server_pids="${member_pids[*]}"
}

# member_ready I: whether member I serves clients. raft-kv: its /status shows a leader and
# everything it knows committed applied (what /ready checks, but /ready's answer may be 100 ms
# old); etcd: /health, a leader and a quorum read through raft answered.
member_ready() {
    local url status commit
    url="$(member_url_of "$cluster_system" "$1")"
    if [ "$cluster_system" = raft-kv ]; then
        status="$(curl -fsS --max-time 1 "$url/status" 2>/dev/null)" || return 1
        [[ $status =~ \"leader_id\":[0-9]+ ]] || return 1
        [[ $status =~ \"commit_index\":([0-9]+) ]] || return 1
        commit="${BASH_REMATCH[1]}"
        [[ $status =~ \"applied_index\":([0-9]+) ]] && [ "${BASH_REMATCH[1]}" -ge "$commit" ]
    else
        curl -fsS --max-time 1 "$url/health" 2>/dev/null | grep -q '"health":"true"'
    fi
}

# start_cluster SYSTEM DIR [MEMBERS]: a fresh cluster of MEMBERS (default 3) under DIR;
# returns once every member is ready.
start_cluster() {
    local i ready pid
    cluster_system="$1"
    cluster_dir="$2"
    members="${3:-3}"
    member_pids=()
    member_url=()
    endpoints=""
    mkdir -p "$cluster_dir"
    for i in $(seq 1 "$members"); do
        member_url[i]="$(member_url_of "$cluster_system" "$i")"
        endpoints+="${endpoints:+,}${member_url[i]}"
        start_member "$i"
    done
    for _ in $(seq 1 600); do
        ready=0
        for i in $(seq 1 "$members"); do
            member_ready "$i" && ready=$((ready + 1))
        done
        [ "$ready" -eq "$members" ] && return 0
        for pid in $server_pids; do
            kill -0 "$pid" 2>/dev/null || { tail -n 20 "$cluster_dir"/*.log "$cluster_dir"/*.out 2>/dev/null; exit 1; }
        done
        sleep 0.1
    done
    echo "$cluster_system did not become ready" >&2
    tail -n 20 "$cluster_dir"/*.log "$cluster_dir"/*.out 2>/dev/null
    exit 1
}

# stop_member I [SIGNAL]: stops member I (default SIGTERM) and waits for it to exit.
stop_member() {
    local pid="${member_pids[$1]}"
    kill -"${2:-TERM}" "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# Stops the cluster running now, if any (SIGTERM: raft-kv finishes in-flight requests).
cleanup() {
    local pid
    for pid in $server_pids; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in $server_pids; do
        wait "$pid" 2>/dev/null || true
    done
    server_pids=""
    member_pids=()
}

# leader_member: the leader's member number, as member 1 sees it (empty if none).
leader_member() {
    if [ "$cluster_system" = raft-kv ]; then
        curl -fsS --max-time 2 "${member_url[1]}/status" |
            python3 -c 'import json, sys; print(json.load(sys.stdin).get("leader_id") or "")'
    else
        # etcd's JSON gateway: the leader's member id; members are matched by their id.
        local i leader
        leader="$(curl -fsS --max-time 2 -X POST -d '{}' "${member_url[1]}/v3/maintenance/status" |
            python3 -c 'import json, sys; print(json.load(sys.stdin)["leader"])')"
        for i in $(seq 1 "$members"); do
            if curl -fsS --max-time 2 -X POST -d '{}' "${member_url[i]}/v3/maintenance/status" |
                python3 -c 'import json, sys; sys.exit(json.load(sys.stdin)["header"]["member_id"] != sys.argv[1])' "$leader"; then
                echo "$i"
                return
            fi
        done
    fi
}

# utime + stime of the servers, in clock ticks.
ticks() {
    local total=0 pid
    for pid in $server_pids; do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    echo "$total"
}

# rss_kib PID: the process's resident set (VmRSS), in KiB.
rss_kib() {
    awk '/^VmRSS:/ {print $2}' "/proc/$1/status"
}

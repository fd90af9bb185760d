#!/usr/bin/env bash
# raftkit's two commands:  ./dev.sh run   (a local raft-kv cluster)   ./dev.sh test   (all tests)
# Both first install the system packages the build needs (protoc; clang + libclang for
# RocksDB's bindgen; iproute2 for the fault suite's network namespaces) when they are
# missing. `./dev.sh setup` does only that.
set -euo pipefail
cd "$(dirname "$0")"

setup() {
    local missing=()
    command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
    command -v clang >/dev/null 2>&1 || missing+=(clang)
    # `ip` for the fault suite's network namespaces (raft-kv-jepsen).
    command -v ip >/dev/null 2>&1 || missing+=(iproute2)
    if ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 \
        && ! ls /usr/lib/*/libclang*.so* >/dev/null 2>&1; then
        missing+=(libclang-dev)
    fi
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "dev.sh: installing ${missing[*]}" >&2
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "dev.sh: please install ${missing[*]} with your package manager" >&2
        exit 1
    fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
    setup) setup ;;
    run)
        setup
        exec cargo run --release -p raft-kv-example --bin raft-kv -- cluster "$@"
        ;;
    test)
        setup
        exec cargo test --workspace "$@"
        ;;
    *)
        echo "usage: ./dev.sh run | test | setup" >&2
        exit 2
        ;;
esac

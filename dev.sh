#!/usr/bin/env bash
# raftkit's two commands:  ./dev.sh run   (a local raft-kv cluster)   ./dev.sh test   (all tests)
# Both first install the system packages the build needs when they are missing, saying which
# and why before installing (protoc; clang + libclang for RocksDB's bindgen; iproute2 for the
# fault suite's network namespaces). `./dev.sh setup` does only that.
set -euo pipefail
cd "$(dirname "$0")"

# Why each system package is needed: printed before anything is installed.
why() {
    case "$1" in
        protobuf-compiler) echo "protoc: compiles the wire schema (raft-core/proto) during the build" ;;
        clang) echo "the C/C++ compiler bindgen drives to generate RocksDB's Rust bindings" ;;
        libclang-dev) echo "libclang, which bindgen loads to read RocksDB's C headers" ;;
        iproute2) echo "ip netns: the fault suite (raft-kv-jepsen) runs its nodes in network namespaces" ;;
        *) echo "needed by the build" ;;
    esac
}

setup() {
    local missing=()
    command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
    command -v clang >/dev/null 2>&1 || missing+=(clang)
    if ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 \
        && ! ls /usr/lib/*/libclang*.so* >/dev/null 2>&1; then
        missing+=(libclang-dev)
    fi
    command -v ip >/dev/null 2>&1 || missing+=(iproute2)
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "dev.sh: the build needs ${#missing[@]} system package(s) that are missing:" >&2
    local p
    for p in "${missing[@]}"; do
        printf '  %-18s %s\n' "$p" "$(why "$p")" >&2
    done
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "dev.sh: no apt-get here: please install them with your package manager" >&2
        exit 1
    fi
    echo "dev.sh: installing them with ${sudo:+sudo }apt-get install ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    echo "dev.sh: installed ${missing[*]}" >&2
}

# Warns before a build that will compile RocksDB (C++) from source: no built copy of it in the
# target dir for this profile yet.
first_build_notice() {
    local profile="$1"
    local target="${CARGO_TARGET_DIR:-target}"
    if ! ls "$target/$profile"/build/librocksdb-sys-*/out/librocksdb.a >/dev/null 2>&1; then
        echo "dev.sh: first build compiles RocksDB from source: 10-25 minutes on 2 cores" \
            "(later builds reuse it from $target/)" >&2
    fi
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
    setup) setup ;;
    run)
        setup
        first_build_notice release
        exec cargo run --release -p raft-kv-example --bin raft-kv -- cluster "$@"
        ;;
    test)
        setup
        first_build_notice debug
        # The fault suite needs root and network namespaces; elsewhere its tests say
        # "skipped: ..." and pass, unless RAFTKIT_REQUIRE_FAULT_SUITE=1 (CI) makes them fail.
        exec cargo test --workspace "$@"
        ;;
    *)
        echo "usage: ./dev.sh run | test | setup" >&2
        exit 2
        ;;
esac

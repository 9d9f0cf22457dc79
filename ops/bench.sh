#!/usr/bin/env bash
# Loopback benchmark: one timeline with 20 member devices against the real
# server (release build), next to a bare websocket broadcast relay.
#
#   ops/bench.sh                 N=2000 posts from 4 posters, file then memory client state
#   ops/bench.sh --quick         N=100 (smoke run)
#   ops/bench.sh --help          every flag (--posts, --posters, --members,
#                                --database-url, --memory-state, --file-state, ...)
#   ops/bench.sh suite           the benchmark suite: durable fan-out, idle memory
#                                per connection, reconnect storm, MLS costs; one
#                                table, every figure next to a baseline
#   ops/bench.sh suite --help    its flags (--timelines, --idle-conns,
#                                --storm-devices, --only fanout,idle,storm,mls, ...)
#
# See ops/README.md, "Benchmarks". Progress goes to stderr, the table to stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p tsunagu-server -p tsunagu-bench
exec target/release/tsunagu-bench "$@"

#!/usr/bin/env bash
# Start the six-node local cluster (client ports 7001-7006: three primaries, three replicas).
# The nodes meet each other and claim their slots from their configs; Ctrl-C stops all.
#   ./start.sh        then: redis-cli -c -p 7001 SET foo bar; redis-cli -p 7002 CLUSTER NODES
#   ./start.sh --fresh   forgets the saved node identities (nodes-*.json) first
set -euo pipefail
cd "$(dirname "$0")"
[ "${1:-}" = "--fresh" ] && rm -f nodes-*.json
# One random secret for the region's cluster bus (a stranger's bus frames are refused).
[ -s bus-secret ] || (umask 077; head -c 24 /dev/urandom | base64 > bus-secret)
BIN=${MERIDIAN_BIN:-}
if [ -z "$BIN" ]; then
  cargo build --release --manifest-path ../../Cargo.toml --bin meridian
  BIN="$(cargo metadata --format-version 1 --no-deps --manifest-path ../../Cargo.toml \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/release/meridian"
fi
trap 'kill $(jobs -p) 2>/dev/null' EXIT INT TERM
for p in 7001 7002 7003 7004 7005 7006; do "$BIN" --config "node-$p.toml" & done
wait

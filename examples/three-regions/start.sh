#!/usr/bin/env bash
# Start regions a, b, c of the local demo (client ports 7101, 7201, 7301). Ctrl-C stops all.
#   ./start.sh         then: redis-cli -p 7101 INCR hits; redis-cli -p 7301 GET hits
set -euo pipefail
cd "$(dirname "$0")"
BIN=${MERIDIAN_BIN:-}
if [ -z "$BIN" ]; then
  cargo build --release --manifest-path ../../Cargo.toml --bin meridian
  BIN="$(cargo metadata --format-version 1 --no-deps --manifest-path ../../Cargo.toml \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/release/meridian"
fi
[ -f certs/ca.pem ] || "$BIN" certs --out certs --regions a,b,c
trap 'kill $(jobs -p) 2>/dev/null' EXIT INT TERM
for r in a b c; do "$BIN" --config "region-$r.toml" & done
wait

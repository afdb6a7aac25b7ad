#!/usr/bin/env bash
# User-space instructions per command, counted by callgrind (repeatable on a busy machine,
# unlike wall-clock rates): one meridian I/O thread under valgrind, 100 k SET then 100 k INCR
# at -P 16 from redis-benchmark, total printed at the end (divide by 200 k).
# Usage: bench/instructions.sh [path/to/meridian]   (needs valgrind, redis-benchmark)
set -euo pipefail
bin=${1:-$(dirname "$0")/../target/release/meridian}
port=${PORT:-7778}
out=$(mktemp -d)
valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.out" \
  "$bin" --port "$port" --log-level warn --io-threads 1 >"$out/valgrind.log" 2>&1 &
pid=$!
for _ in $(seq 1 120); do
  redis-cli -p "$port" ping >/dev/null 2>&1 && break
  sleep 0.5
done
redis-benchmark -p "$port" -t set -c 10 -n 100000 -r 100000 -P 16 -q >/dev/null 2>&1
redis-benchmark -p "$port" -t incr -c 10 -n 100000 -r 100000 -P 16 -q >/dev/null 2>&1
kill -INT "$pid"
wait "$pid" || true
grep "Collected" "$out/valgrind.log"
echo "profile: $out/callgrind.out (callgrind_annotate $out/callgrind.out)"

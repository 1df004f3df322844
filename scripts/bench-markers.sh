#!/usr/bin/env bash
# Redis memory taken by the write-behind buffer's batch markers under steady
# async load: one small `tally:batch:*` key per flushed chunk, living
# TALLY_BATCH_MARKER_TTL_S. Runs async BatchIncrement load against one
# counter for RUN_SECONDS with a short marker TTL (so the plateau shows within
# the run), samples Redis, and projects the figures for the default TTL and
# for the 24 h TTL markers used to have. Report under bench-results/.
#
#   RUN_SECONDS=180 MARKER_TTL_S=60 scripts/bench-markers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

RUN_SECONDS=${RUN_SECONDS:-180}
MARKER_TTL_S=${MARKER_TTL_S:-60}
DEFAULT_TTL_S=600
require_tools redis-server redis-cli python3

cargo build --release -q -p tally-counter -p tally-bench
work=$(mktemp -d)
trap kill_started EXIT

redis_port=$(free_port)
pids+=("$(start_redis "$redis_port" "$work/redis.log")")
grpc_port=$(free_port); admin_port=$(free_port)
pids+=("$(TALLY_BATCH_MARKER_TTL_S=$MARKER_TTL_S start_counter "$redis_port" "$grpc_port" "$admin_port" "$work/counter.log")")

used() { redis-cli -p "$redis_port" info memory | awk -F: '/^used_memory:/ { print $2 + 0 }'; }
markers() { redis-cli -p "$redis_port" --scan --pattern 'tally:batch:*' | wc -l; }

# 1000 counters: their hashes reach full size within seconds, so what grows
# afterwards is the markers.
target/release/tally-bench --scenario batch-async --endpoint "http://127.0.0.1:$grpc_port" --concurrency 8 \
  --keys 1000 --batch 100 --seconds "$RUN_SECONDS" --prefix "markers-$$" >"$work/load.csv" &
load=$!
samples="| s | markers | used_memory (MiB) |"$'\n'"|---|---|---|"$'\n'
start=$(date +%s)
: >"$work/samples"
while kill -0 "$load" 2>/dev/null; do
  sleep 10
  now=$(( $(date +%s) - start )); m=$(markers); u=$(used)
  echo "$now $m $u" >>"$work/samples"
  samples+="| $now | $m | $(python3 -c "print(f'{$u / 1048576:.2f}')") |"$'\n'
done
wait "$load"
elapsed=$(( $(date +%s) - start ))
count=$(markers)
ops=$(cut -d, -f3 "$work/load.csv")
# Bytes per marker from Redis' own used_memory while markers only grow (up
# to one TTL): what a marker really costs, overheads included (MEMORY USAGE
# of one key leaves out the keyspace's share).
bytes=$(python3 - "$work/samples" "$MARKER_TTL_S" <<'PY'
import sys
rows = [tuple(map(int, line.split())) for line in open(sys.argv[1])]
growing = [r for r in rows if r[0] <= int(sys.argv[2])] or rows
(t0, m0, u0), (t1, m1, u1) = growing[0], growing[-1]
print(round((u1 - u0) / max(m1 - m0, 1)))
PY
)

read -r rate plateau_default per_hour_old <<<"$(python3 - "$count" "$MARKER_TTL_S" "$elapsed" "$bytes" "$DEFAULT_TTL_S" <<'PY'
import sys
count, ttl, elapsed, size, default_ttl = map(float, sys.argv[1:])
rate = count / min(ttl, elapsed)          # markers created per second (live ones span one TTL)
print(f"{rate:.1f} {rate * size * default_ttl / 1048576:.2f} {rate * size * 3600 / 1048576:.1f}")
PY
)"

mkdir -p bench-results
report="bench-results/markers-$(date -u +%Y%m%d-%H%M%S).md"
cat >"$report" <<MD
# Write-behind marker memory — $(date -u '+%Y-%m-%d %H:%M UTC')

Async BatchIncrement load (8 callers, 100 operations per batch, 1000 counters) for ${elapsed}s against one
counter with the default flush settings (TALLY_BATCH_SIZE=100, TALLY_FLUSH_INTERVAL_MS=100) and
TALLY_BATCH_MARKER_TTL_S=$MARKER_TTL_S; $ops operations acknowledged.

$samples
- Markers created: **$rate per second**, $bytes bytes each (growth of \`used_memory\` ÷ markers added, up to one TTL).
- Live markers level off at rate × TTL: with the default TTL ($DEFAULT_TTL_S s) that is **$plateau_default MiB**,
  reached after $DEFAULT_TTL_S s; after that Redis memory no longer grows (0 MiB per hour).
- With the former 24 h TTL the same load grew Redis by **$per_hour_old MiB per hour**, for 24 hours.
MD
cat "$report"

#!/usr/bin/env bash
# Throughput through one gateway with 1, 2 and 3 counters on one Redis
# (issue 4's scaling report), wrk -c 100 on 100k keys, side by side in one
# run. Writes bench-results/scale-<time>.md and prints it.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
require_tools redis-server wrk
cargo build --release -q -p tally-counter -p tally-gateway
work=$(mktemp -d)
trap kill_started EXIT

redis_port=$(free_port)
pids+=("$(start_redis "$redis_port" "$work/redis.log")")
endpoints=()
for n in 1 2 3; do
  grpc_port=$(free_port); admin_port=$(free_port)
  pids+=("$(TALLY_WORKER_THREADS=1 start_counter "$redis_port" "$grpc_port" "$admin_port" "$work/counter$n.log")")
  endpoints+=("http://127.0.0.1:$grpc_port")
done

rows=""
for n in 1 2 3; do
  http_port=$(free_port)
  list=$(IFS=,; echo "${endpoints[*]:0:$n}")
  gateway_pid=$(TALLY_WORKER_THREADS=1 start_gateway "$http_port" "$list" "$work/gateway$n.log" "$n")
  for scenario in hot keys; do
    out=$(wrk -t2 -c100 -d"${SECONDS_PER_RUN}s" --latency -s "scripts/wrk/$scenario.lua" "http://127.0.0.1:$http_port/api/v1/counter/increment")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    rows+="| $n | $scenario | $rps | $p99 |"$'\n'
  done
  stop_pids "$gateway_pid"
done

mkdir -p bench-results
report="bench-results/scale-$(date -u +%Y%m%d-%H%M%S).md"
cat >"$report" <<MD
# tally scaling — $(date -u '+%Y-%m-%d %H:%M UTC')

One gateway (1 worker thread) in front of 1, 2 or 3 counters (1 worker thread each) on one Redis;
wrk -t2 -c100, ${SECONDS_PER_RUN}s per row, all on this $(nproc)-core machine (so extra counters
compete for the same cores: this shows the overhead and balance of more endpoints, not capacity).

| counters | keys | requests/s | p99 |
|---|---|---|---|
$rows
MD
cat "$report"
echo "report: $report"

#!/usr/bin/env bash
# The whole path over HTTP — load generator → tally-gateway → tally-counter →
# Redis — next to redis-benchmark against the same Redis, in one run
#. Starts its own processes on free loopback ports; writes a
# Markdown report and an SVG plot under bench-results/ and prints the report.
#
#   SECONDS_PER_RUN=10 [GATEWAY_THREADS=n] [COUNTER_THREADS=n] scripts/bench-gateway.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
# Default settings unless told: the services' own worker counts (one per
# core the cgroup quota allows; the gateway serves thread-per-core).
GATEWAY_THREADS=${GATEWAY_THREADS:-}
COUNTER_THREADS=${COUNTER_THREADS:-}
require_tools redis-server redis-benchmark redis-cli hey wrk python3

cargo build --release -q -p tally-counter -p tally-gateway
work=$(mktemp -d)
trap kill_started EXIT

redis_port=$(free_port)
redis_pid=$(start_redis "$redis_port" "$work/redis.log")
pids+=("$redis_pid")
grpc_port=$(free_port); admin_port=$(free_port); http_port=$(free_port)
counter_pid=$([ -z "$COUNTER_THREADS" ] || export TALLY_WORKER_THREADS=$COUNTER_THREADS; start_counter "$redis_port" "$grpc_port" "$admin_port" "$work/counter.log")
pids+=("$counter_pid")
gateway_pid=$([ -z "$GATEWAY_THREADS" ] || export TALLY_WORKER_THREADS=$GATEWAY_THREADS; start_gateway "$http_port" "http://127.0.0.1:$grpc_port" "$work/gateway.log")
pids+=("$gateway_pid")
url="http://127.0.0.1:$http_port/api/v1/counter"

requests=$((SECONDS_PER_RUN * 150000))
redis-benchmark -p "$redis_port" -t incr -c 100 -n "$requests" --csv >"$work/rb.csv" 2>/dev/null
redis-benchmark -p "$redis_port" -t incr -c 100 -P 16 -n $((requests * 8)) --csv >"$work/rb16.csv" 2>/dev/null

# The original performance plan's own command, unchanged.
hey -n 10000 -c 100 -m POST -T application/json \
  -d '{"resource_id":"post:1","counter_type":"likes","delta":1}' "$url/increment" >"$work/hey.txt"
for scenario in hot keys batch; do
  path=increment; [ "$scenario" = batch ] && path=batch-increment
  wrk -t2 -c100 -d"${SECONDS_PER_RUN}s" --latency -s "scripts/wrk/$scenario.lua" "$url/$path" >"$work/wrk-$scenario.txt"
done
hot_value=$(redis-cli -p "$redis_port" HGET 'tally:{bench:hot}' likes)

mkdir -p bench-results
stamp=$(date -u +%Y%m%d-%H%M%S)
python3 scripts/bench_report.py "$work" "bench-results/gateway-$stamp" \
  --rss "gateway=$(peak_rss_mib "$gateway_pid")" --rss "counter=$(peak_rss_mib "$counter_pid")" \
  --rss "redis=$(peak_rss_mib "$redis_pid")" --threads "gateway=${GATEWAY_THREADS:-default},counter=${COUNTER_THREADS:-default}" \
  --seconds "$SECONDS_PER_RUN" --hot-value "$hot_value"
cat "bench-results/gateway-$stamp.md"
echo "report: bench-results/gateway-$stamp.md (plot: bench-results/gateway-$stamp.svg)"

#!/usr/bin/env bash
# What trace export costs, and that a missing or hung collector costs no
# more (issue: export failure must not fail or slow requests). The same wrk
# load (one hot counter, -c 100) through gateway → counter → Redis with:
#   off          no OTEL_EXPORTER_OTLP_ENDPOINT (no spans are made at all)
#   collector    a working collector (otlp-sink), every request sampled
#   refused      endpoint on a closed port, every request sampled
#   hung         endpoint accepts TCP but never answers, every request sampled
#   collector-10% working collector, the default sampler (parent-based, 0.1)
#   refused-10%  closed port, the default sampler
# Fresh counter and gateway per case, one Redis. Writes a Markdown report
# under bench-results/ and prints it.
#
#   SECONDS_PER_RUN=10 scripts/bench-tracing.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
require_tools redis-server redis-cli wrk python3

cargo build --release -q -p tally-counter -p tally-gateway -p tally-bench
work=$(mktemp -d)
trap kill_started EXIT

redis_port=$(free_port)
redis_pid=$(start_redis "$redis_port" "$work/redis.log")
pids+=("$redis_pid")

# A "collector" that completes the TCP handshake (the kernel does, from the
# listen backlog) and then never reads or answers.
hung_port=$(free_port)
python3 -c "import socket,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', $hung_port)); s.listen(1024); time.sleep(3600)" &
pids+=("$!")
refused_port=$(free_port) # nothing listens here
sink_port=$(free_port)
target/release/otlp-sink "127.0.0.1:$sink_port" >"$work/sink.log" 2>&1 &
pids+=("$!")
wait_for_log "$work/sink.log" "otlp-sink listening"

# Converts a wrk latency ("812.00us", "1.42ms", "1.01s") to milliseconds.
to_ms() {
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); printf "%.2f", v / 1000 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.2f", v }
    else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.2f", v * 1000 }
    else { print v } }'
}

# run_case NAME [ENV=VALUE…]: fresh counter + gateway with the given
# environment, wrk for SECONDS_PER_RUN, one report row.
run_case() {
  local name=$1
  shift
  local grpc_port admin_port http_port counter_pid gateway_pid
  grpc_port=$(free_port); admin_port=$(free_port); http_port=$(free_port)
  counter_pid=$(
    [ $# -eq 0 ] || export "$@"
    TALLY_WORKER_THREADS=1 start_counter "$redis_port" "$grpc_port" "$admin_port" "$work/counter-$name.log"
  )
  gateway_pid=$(
    [ $# -eq 0 ] || export "$@"
    TALLY_WORKER_THREADS=1 start_gateway "$http_port" "http://127.0.0.1:$grpc_port" "$work/gateway-$name.log"
  )
  pids+=("$counter_pid" "$gateway_pid")
  wrk -t2 -c100 -d"${SECONDS_PER_RUN}s" --latency -s scripts/wrk/hot.lua \
    "http://127.0.0.1:$http_port/api/v1/counter/increment" >"$work/wrk-$name.txt"
  local rps p50 p99 errors
  rps=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$work/wrk-$name.txt")
  p50=$(to_ms "$(awk '$1 == "50%" {print $2}' "$work/wrk-$name.txt")")
  p99=$(to_ms "$(awk '$1 == "99%" {print $2}' "$work/wrk-$name.txt")")
  errors=$(awk '/Non-2xx|Socket errors/ {print}' "$work/wrk-$name.txt" | tr '\n' ' ')
  rss=$(peak_rss_mib "$gateway_pid")
  stop_pids "$counter_pid" "$gateway_pid"
  echo "| $name | $rps | $p50 | $p99 | ${rss} | ${errors:-none} |" >>"$work/rows.md"
}

run_case off
run_case collector OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$sink_port" OTEL_TRACES_SAMPLER=always_on
run_case refused OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$refused_port" OTEL_TRACES_SAMPLER=always_on
run_case hung OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$hung_port" OTEL_TRACES_SAMPLER=always_on
run_case collector-10% OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$sink_port"
run_case refused-10% OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$refused_port"

mkdir -p bench-results
report="bench-results/tracing-$(date -u +%Y%m%d-%H%M%S).md"
{
  echo "# Trace export cost and an unreachable collector"
  echo
  echo "wrk -t2 -c100 -d${SECONDS_PER_RUN}s, one hot counter, POST /api/v1/counter/increment;"
  echo "gateway and counter with one worker thread each; $(nproc) cores shared with wrk and Redis."
  echo
  echo "| case | req/s | p50 ms | p99 ms | gateway peak RSS MiB | errors |"
  echo "|---|---|---|---|---|---|"
  cat "$work/rows.md"
} >"$report"
cat "$report"
echo "report: $report"

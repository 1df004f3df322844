#!/usr/bin/env bash
# The counter service alone, over gRPC, next to redis-benchmark against the
# same Redis in the same run. Starts its own redis-server and
# tally-counter on free loopback ports, writes a Markdown report under
# bench-results/ and prints it.
#
#   SECONDS_PER_RUN=10 CONCURRENCY=100 scripts/bench-counter.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
CONCURRENCY=${CONCURRENCY:-100}
require_tools redis-server redis-benchmark python3

cargo build --release -q -p tally-counter -p tally-bench
work=$(mktemp -d)
trap kill_started EXIT

redis_port=$(free_port)
redis_pid=$(start_redis "$redis_port" "$work/redis.log")
pids+=("$redis_pid")
grpc_port=$(free_port); admin_port=$(free_port)
counter_pid=$(start_counter "$redis_port" "$grpc_port" "$admin_port" "$work/counter.log")
pids+=("$counter_pid")

requests=$((SECONDS_PER_RUN * 150000))
rb() { redis-benchmark -p "$redis_port" -t incr -c 100 -n "$requests" --csv "$@" 2>/dev/null | tail -1 | tr -d '"'; }
IFS=, read -r _ rb_rps _ _ rb_p50 _ rb_p99 _ <<<"$(rb)"
IFS=, read -r _ rb16_rps _ _ rb16_p50 _ rb16_p99 _ <<<"$(rb -P 16 -n $((requests * 8)))"
# The same work as the 100,000-key scenarios: HINCRBY on the counters' own
# key layout, so the ratio against it shows the counter's own overhead.
IFS=, read -r _ rbh_rps _ _ rbh_p50 _ rbh_p99 _ <<<"$(redis-benchmark -p "$redis_port" -c 100 -P 16 -r 100000 \
  -n $((requests * 8)) --csv hincrby 'tally:{bench-__rand_int__}' views 1 2>/dev/null | tail -1 | tr -d '"')"

rows=""
# scenario[:keys] — 100,000 counters unless given; with one counter the
# pipelined INCR above is the same work.
for spec in unary-hot unary-keys batch batch-async stream batch:1 stream:1; do
  scenario=${spec%%:*}
  keys=100000
  [[ $spec == *:* ]] && keys=${spec##*:}
  line=$(target/release/tally-bench --scenario "$scenario" --endpoint "http://127.0.0.1:$grpc_port" \
    --concurrency "$CONCURRENCY" --seconds "$SECONDS_PER_RUN" --keys "$keys" --prefix "bench-$$-$scenario-$keys")
  IFS=, read -r name reqs ops errors secs ops_s p50 p99 max <<<"$line"
  case $scenario in batch|batch-async|stream) ref=$rb16_rps; ref_name="-P 16" ;; *) ref=$rb_rps; ref_name="-c 100" ;; esac
  ratio=$(python3 -c "print(f'{$ops_s / $ref:.2f}')")
  label=$scenario same_work=""
  if [ "$keys" = 1 ]; then
    label="$scenario, one counter"
  else
    case $scenario in batch|batch-async|stream) same_work=$(python3 -c "print(f'{$ops_s / $rbh_rps:.2f} ×')") ;; esac
  fi
  rows+="| $label | $ops_s | $p50 | $p99 | $max | $errors | $ratio × redis-benchmark $ref_name | $same_work |"$'\n'
done
counter_rss=$(peak_rss_mib "$counter_pid")
redis_rss=$(peak_rss_mib "$redis_pid")

mkdir -p bench-results
report="bench-results/counter-$(date -u +%Y%m%d-%H%M%S).md"
cat >"$report" <<MD
# tally-counter benchmark — $(date -u '+%Y-%m-%d %H:%M UTC')

Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); load generator, counter and Redis on the same machine.
Each scenario: $CONCURRENCY concurrent callers for ${SECONDS_PER_RUN}s over 4 HTTP/2 connections; delta 1.
Latency is per request (a batch request carries 100 operations). Redis $(redis-server --version | awk '{print $3}' | tr -d v=).

## Redis ceiling (same Redis, same run)

| redis-benchmark | ops/s | p50 ms | p99 ms |
|---|---|---|---|
| \`-t incr -c 100\` | $rb_rps | $rb_p50 | $rb_p99 |
| \`-t incr -c 100 -P 16\` | $rb16_rps | $rb16_p50 | $rb16_p99 |
| \`-c 100 -P 16 -r 100000 hincrby tally:{bench-__rand_int__} views 1\` (same work as the 100,000-key scenarios) | $rbh_rps | $rbh_p50 | $rbh_p99 |

## tally-counter over gRPC → Redis

| scenario | ops/s | p50 ms | p99 ms | max ms | errors | vs Redis | vs the same work pipelined (hincrby -P 16) |
|---|---|---|---|---|---|---|---|
$rows
Keys: \`unary-hot\` and the "one counter" rows use one counter (the same work as the pipelined INCR); the others 100,000 counters. \`batch-async\` is acknowledged once buffered.

## Memory

| process | peak RSS |
|---|---|
| tally-counter | $counter_rss MiB |
| redis-server | $redis_rss MiB |
MD
cat "$report"
echo "report: $report"

#!/usr/bin/env bash
# `make run`: the local stack on one machine. Uses a real redis-server when
# one is installed, otherwise the counter's in-memory store (said plainly).
# Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

cargo build --release -q -p tally-counter
work=$(mktemp -d)
pids=()
cleanup() {
  trap - INT TERM EXIT
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "stopped."
}
trap cleanup INT TERM EXIT

if command -v redis-server >/dev/null; then
  redis_port=${TALLY_RUN_REDIS_PORT:-$(free_port)}
  pids+=("$(start_redis "$redis_port" "$work/redis.log")")
  store="redis://127.0.0.1:$redis_port"
  echo "store: redis-server on 127.0.0.1:$redis_port (throwaway, no persistence)"
else
  store=memory
  echo "store: IN-MEMORY (no redis-server found; counts vanish on exit — apt-get install redis-server for the real thing)"
fi

export TALLY_STORE=${TALLY_STORE:-$store}
export TALLY_LISTEN=${TALLY_LISTEN:-127.0.0.1:9001}
export TALLY_ADMIN_LISTEN=${TALLY_ADMIN_LISTEN:-127.0.0.1:8081}
target/release/tally-counter > >(tee "$work/counter.log") 2>&1 &
pids+=("$!")
wait_for_log "$work/counter.log" "tally-counter listening"
cat <<MSG

tally-counter gRPC on $TALLY_LISTEN, admin on http://$TALLY_ADMIN_LISTEN (/health /ready /metrics)
Try it (grpcurl uses server reflection):
  grpcurl -plaintext -d '{"resource_id":"post:1","counter_type":"likes","delta":1}' $TALLY_LISTEN tally.counter.v1.CounterService/Increment
  curl -s http://$TALLY_ADMIN_LISTEN/metrics | grep tally_counter_grpc_requests_total
Ctrl-C stops everything.
MSG
wait

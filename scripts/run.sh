#!/usr/bin/env bash
# `make run`: the local stack on one machine — Redis (when a redis-server is
# installed; otherwise the counter's in-memory store, said plainly), the
# counter on :9001 (admin :8081) and the gateway on :8080 (admin :8082). Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

cargo build --release -q -p tally-counter -p tally-gateway
work=$(mktemp -d)
cleanup() {
  trap - INT TERM EXIT
  kill_started
  echo "stopped."
}
trap cleanup INT TERM EXIT

store=memory
if [ -n "${TALLY_STORE:-}" ]; then
  echo "store: $TALLY_STORE (from TALLY_STORE)"
elif command -v redis-server >/dev/null; then
  redis_port=${TALLY_RUN_REDIS_PORT:-$(free_port)}
  pids+=("$(start_redis "$redis_port" "$work/redis.log")")
  store="redis://127.0.0.1:$redis_port"
  echo "store: redis-server on 127.0.0.1:$redis_port (throwaway, no persistence)"
else
  echo "store: IN-MEMORY (no redis-server found; counts vanish on exit — apt-get install redis-server for the real thing)"
fi

counter_grpc=${COUNTER_LISTEN:-127.0.0.1:9001}
counter_admin=${COUNTER_ADMIN_LISTEN:-127.0.0.1:8081}
gateway_http=${GATEWAY_LISTEN:-127.0.0.1:8080}
gateway_admin=${GATEWAY_ADMIN_LISTEN:-127.0.0.1:8082}
TALLY_STORE=${TALLY_STORE:-$store} TALLY_LISTEN=$counter_grpc TALLY_ADMIN_LISTEN=$counter_admin \
  target/release/tally-counter > >(tee "$work/counter.log") 2>&1 &
pids+=("$!")
wait_for_log "$work/counter.log" "tally-counter listening"
TALLY_LISTEN=$gateway_http TALLY_ADMIN_LISTEN=$gateway_admin TALLY_COUNTER_ENDPOINTS=http://$counter_grpc \
  target/release/tally-gateway > >(tee "$work/gateway.log") 2>&1 &
pids+=("$!")
wait_for_log "$work/gateway.log" "healthy=true"
cat <<MSG

tally is up: gateway http://$gateway_http (admin http://$gateway_admin) → counter $counter_grpc (admin http://$counter_admin) → ${TALLY_STORE:-$store}
Try it:
  curl -s -X POST http://$gateway_http/api/v1/counter/increment -H 'Content-Type: application/json' \
       -d '{"resource_id":"post:1","counter_type":"likes","delta":1}'
  curl -s http://$gateway_http/api/v1/counter/post:1/likes
  curl -s http://$gateway_admin/api/v1/system/backends   # admin port: probes, /metrics, backends
  grpcurl -plaintext $counter_grpc list        # the counter's gRPC API, via reflection
Ctrl-C stops everything.
MSG
wait

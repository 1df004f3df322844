#!/usr/bin/env bash
# What waiting for a Redis replica costs (TALLY_STORE_WAIT_REPLICAS=1):
# 100k-key HTTP increments through two chains on one master with one
# replica, one chain's counter waiting for the replica on every write (B),
# the other not (A), in turns (A B B A) for ROUNDS rounds of RUN_SECONDS each.
# Prints req/s, p50, p99 and non-2xx per run and B ÷ A per round.
#
#   ROUNDS=2 RUN_SECONDS=8 scripts/bench-replica-wait.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ROUNDS=${ROUNDS:-2}
RUN_SECONDS=${RUN_SECONDS:-8}
require_tools redis-server redis-cli wrk

cargo build --release -q -p tally-counter -p tally-gateway
work=$(mktemp -d)
trap kill_started EXIT

master=$(free_port) replica=$(free_port)
pids+=("$(start_redis "$master" "$work/master.log")")
redis-server --port "$replica" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" \
  --replicaof 127.0.0.1 "$master" --repl-diskless-load on-empty-db --logfile "$work/replica.log" >/dev/null 2>&1 &
pids+=("$!")
# Online as the master sees it: it streams writes to the replica from then on.
for _ in $(seq 1 300); do
  redis-cli -p "$master" info replication | grep -q "port=$replica,state=online" && break
  sleep 0.1
done
redis-cli -p "$master" info replication | grep -q "port=$replica,state=online" || { echo "the replica did not sync" >&2; exit 1; }

# chain <replicas to wait for>: a counter and a gateway, their pids added to
# the ones stopped on exit (so not in a subshell); the HTTP port in $http.
chain() {
  local grpc admin
  grpc=$(free_port); admin=$(free_port); http=$(free_port)
  pids+=("$(TALLY_STORE_WAIT_REPLICAS=$1 start_counter "$master" "$grpc" "$admin" "$work/counter-$1.log")")
  pids+=("$(start_gateway "$http" "http://127.0.0.1:$grpc" "$work/gateway-$1.log")")
}
chain 0; a=$http
chain 1; b=$http

url() { echo "http://127.0.0.1:$1/api/v1/counter/increment"; }
# run <label> <port>: one wrk run; prints its line and leaves req/s in $rps.
run() {
  wrk -t2 -c100 -d"${RUN_SECONDS}s" --latency -s scripts/wrk/keys.lua "$(url "$2")" >"$work/wrk.txt"
  rps=$(grep -oP 'Requests/sec:\s+\K[\d.]+' "$work/wrk.txt")
  printf '%s  %9.0f req/s  p50 %-8s p99 %-8s non-2xx %s\n' "$1" "$rps" \
    "$(grep -oP '^\s+50%\s+\K\S+' "$work/wrk.txt")" "$(grep -oP '^\s+99%\s+\K\S+' "$work/wrk.txt")" \
    "$(grep -oP 'Non-2xx or 3xx responses: \K\d+' "$work/wrk.txt" || echo 0)"
}
for port in "$a" "$b"; do wrk -t2 -c100 -d3s -s scripts/wrk/keys.lua "$(url "$port")" >/dev/null; done
echo "A: not waiting; B: waiting for 1 replica (100k keys, wrk -t2 -c100, ${RUN_SECONDS} s runs)"
for round in $(seq 1 "$ROUNDS"); do
  run A "$a"; a1=$rps; run B "$b"; b1=$rps; run B "$b"; b2=$rps; run A "$a"; a2=$rps
  python3 -c "print(f'round $round: B / A = {($b1 + $b2) / ($a1 + $a2):.3f}')"
done

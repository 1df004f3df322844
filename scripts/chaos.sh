#!/usr/bin/env bash
# The chaos soak (`make chaos`): a real stack on loopback ports — redis-server
# with an fsync-always AOF, two counters, a gateway — under HTTP load while
# counters and Redis are killed, paused and restarted at random; then the
# faults stop, the stack must recover, a clean phase must see no error, and
# the counts stored in Redis must match what the clients were told. Exits
# non-zero when a check fails; the Markdown report goes to bench-results/.
#
#   CHAOS_SECONDS=60 CHAOS_SEED=42 scripts/chaos.sh
#   CHAOS_STORE=cluster scripts/chaos.sh
#
# CHAOS_SECONDS: length of the fault phase (default 300, at most 600).
# CHAOS_SEED: seed of the fault schedule (default random; the report prints
# it so a run can be repeated).
# CHAOS_STORE: redis (default: one redis-server, killed and paused),
# cluster (a Redis Cluster of three masters; the faults move the written
# resources' slots between masters and pause masters) or cluster-replicated
# (the same with a replica per master, waited for on every write; the faults
# also crash masters, which their replicas replace).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

CHAOS_SECONDS=${CHAOS_SECONDS:-300}
require_tools redis-server redis-cli

cargo build --release -q -p tally-counter -p tally-gateway -p tally-bench
args=(--seconds "$CHAOS_SECONDS" --out-dir bench-results --bin-dir target/release)
[ -n "${CHAOS_SEED:-}" ] && args+=(--seed "$CHAOS_SEED")
args+=(--store "${CHAOS_STORE:-redis}")
# tally-chaos starts and stops every process itself.
exec target/release/tally-chaos "${args[@]}"

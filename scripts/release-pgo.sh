#!/usr/bin/env bash
# The release build that ships: tally-counter and tally-gateway (and the
# benchmark's tally-reference, trained the same way) optimised with the
# profile of their own hot paths (profile-guided optimisation, PGO).
#
#   1. Build instrumented binaries (`-Cprofile-generate`).
#   2. Run them on loopback under the benchmark's loads for a few seconds
#      each: HTTP increments of one hot key and of 100k keys, GETs of one
#      counter and of 10k, the chain on a throwaway redis-server (the
#      reference beside it on the same Redis, under the same loads); then
#      the chain alone under increments with idempotency keys, batch
#      increments, HTTP/2 (h2c), API keys, TLS on every hop (HTTPS with
#      HTTP/1.1 and h2, mutual TLS to the counter, TLS to Redis) and the
#      counter on a Redis Cluster of three masters: a path left without a
#      profile is compiled as cold code, and the first PGO build, trained
#      on plain HTTP/1.1 only, made TLS and HTTP/2 0-7 % cheaper where it
#      made plain HTTP/1.1 16 % cheaper.
#      Each process is stopped with SIGTERM and writes its profile as it
#      exits.
#   3. Merge the profiles (`llvm-profdata`, from rustup's `llvm-tools`).
#   4. Build again with `-Cprofile-use`: the compiler lays out, inlines and
#      orders branches by what the hot paths did.
#
# Why: measured in turns on 100k-key increments, the PGO build of the
# chain costs 16 % less CPU per increment than the plain release build
# (docs/bench/performance-log.md). The binaries land in target/pgo/release/;
# `make bench-ab`, `make bench-compare` and `BIN_DIR=…` take them from
# there. Takes two full release builds (about 25 minutes on two cores).
#
#   scripts/release-pgo.sh        (needs redis-server, redis-cli, wrk, h2load, openssl
#                                  and rustup's llvm-tools)
#   SECONDS_PER_LOAD=5 (how long each training load runs)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

seconds=${SECONDS_PER_LOAD:-5}
require_tools redis-server redis-cli wrk h2load openssl python3
host=$(rustc -vV | sed -n 's/^host: //p')
profdata="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
if [ ! -x "$profdata" ]; then
  echo "missing: llvm-profdata (install it with: rustup component add llvm-tools)" >&2
  exit 1
fi
packages=(-p tally-counter -p tally-gateway -p tally-bench)
pgo=$PWD/target/pgo
out=$pgo/release
rm -rf "$pgo/raw"
mkdir -p "$pgo/raw" "$out"

# --target keeps the flags off build scripts and proc macros: only the
# binaries are instrumented, and only their runs write profiles.
echo "PGO 1/4: instrumented build" >&2
CARGO_TARGET_DIR=target/pgo-generate RUSTFLAGS="-Cprofile-generate=$pgo/raw" \
  cargo build --release --locked --target "$host" "${packages[@]}"
trained=target/pgo-generate/$host/release

echo "PGO 2/4: training on loopback, ${seconds} s a load" >&2
work=$(mktemp -d)
trap kill_started EXIT
redis_port=$(free_port)
redis_pid=$(start_redis "$redis_port" "$work/redis.log")
pids+=("$redis_pid")
grpc=$(free_port); admin=$(free_port); http=$(free_port); ref_port=$(free_port)
counter_pid=$(BIN_DIR=$trained start_counter "$redis_port" "$grpc" "$admin" "$work/counter.log")
pids+=("$counter_pid")
gateway_pid=$(BIN_DIR=$trained start_gateway "$http" "http://127.0.0.1:$grpc" "$work/gateway.log")
pids+=("$gateway_pid")
ref_pid=$(REFERENCE=$trained/tally-reference start_reference "$redis_port" "$ref_port" "$work/reference.log")
pids+=("$ref_pid")
for port in "$http" "$ref_port"; do
  base="http://127.0.0.1:$port/api/v1/counter"
  wrk -t2 -c100 -d"${seconds}s" -s scripts/wrk/hot.lua "$base/increment" >/dev/null
  wrk -t2 -c100 -d"${seconds}s" -s scripts/wrk/keys.lua "$base/increment" >/dev/null
  wrk -t2 -c100 -d"${seconds}s" "$base/bench:hot/likes" >/dev/null
  wrk -t2 -c100 -d"${seconds}s" -s scripts/wrk/get-keys.lua "$base/" >/dev/null
done
chain="http://127.0.0.1:$http/api/v1/counter"
wrk -t2 -c100 -d"${seconds}s" -s scripts/wrk/keyed.lua "$chain/increment" >/dev/null
wrk -t2 -c20 -d"${seconds}s" -s scripts/wrk/batch.lua "$chain/batch-increment" >/dev/null
printf '{"resource_id":"bench:hot","counter_type":"likes","delta":1}' >"$work/h2.json"
h2() { h2load -D "$seconds" -t 2 -c 100 -m 10 -d "$work/h2.json" -H 'content-type: application/json' "$1" >/dev/null; }
h2 "$chain/increment"
stop_pids "$gateway_pid" "$ref_pid"

# Every request with an API key (TALLY_AUTH=api_keys).
key="train-key-$$-$RANDOM"
write_api_keys "$work/keys.yaml" "$key"
auth=$(free_port)
auth_pid=$(BIN_DIR=$trained TALLY_AUTH=api_keys TALLY_AUTH_KEYS_FILE="$work/keys.yaml" \
  start_gateway "$auth" "http://127.0.0.1:$grpc" "$work/auth.log")
pids+=("$auth_pid")
wrk -t2 -c100 -d"${seconds}s" -H "Authorization: Bearer $key" -s scripts/wrk/keys.lua \
  "http://127.0.0.1:$auth/api/v1/counter/increment" >/dev/null
stop_pids "$auth_pid" "$counter_pid"

# TLS on every hop, as production runs it: HTTPS (HTTP/1.1 and h2) to the
# gateway, mutual TLS to the counter, TLS to Redis.
make_test_certs "$work/certs"
tls_redis_port=$(free_port)
pids+=("$(start_tls_redis "$work/certs" "$tls_redis_port" "$work/redis-tls.log")")
read -r tls_http tls_gateway tls_counter < <(BIN_DIR=$trained start_tls_chain "$work/certs" "$tls_redis_port" "$work/tls")
pids+=("$tls_gateway" "$tls_counter")
tls="https://127.0.0.1:$tls_http/api/v1/counter"
wrk -t2 -c100 -d"${seconds}s" -s scripts/wrk/hot.lua "$tls/increment" >/dev/null
wrk -t2 -c100 -d"${seconds}s" -s scripts/wrk/keys.lua "$tls/increment" >/dev/null
wrk -t2 -c100 -d"${seconds}s" "$tls/bench:hot/likes" >/dev/null
h2 "$tls/increment"
stop_pids "$tls_gateway" "$tls_counter"

# The counter on a Redis Cluster of three masters.
read -r cluster_url cluster_pids < <(start_redis_cluster "$work/cluster")
read -ra cluster_pids <<<"$cluster_pids"
pids+=("${cluster_pids[@]}")
grpc=$(free_port); admin=$(free_port); http=$(free_port)
counter_pid=$(BIN_DIR=$trained start_counter "$cluster_url" "$grpc" "$admin" "$work/counter-cluster.log")
pids+=("$counter_pid")
gateway_pid=$(BIN_DIR=$trained start_gateway "$http" "http://127.0.0.1:$grpc" "$work/gateway-cluster.log")
pids+=("$gateway_pid")
wrk -t2 -c100 -d"${seconds}s" -s scripts/wrk/keys.lua "http://127.0.0.1:$http/api/v1/counter/increment" >/dev/null
wrk -t2 -c100 -d"${seconds}s" -s scripts/wrk/get-keys.lua "http://127.0.0.1:$http/api/v1/counter/" >/dev/null
stop_pids "$gateway_pid" "$counter_pid"

echo "PGO 3/4: merging the profiles" >&2
shopt -s nullglob
raw=("$pgo"/raw/*.profraw)
[ "${#raw[@]}" -gt 0 ] || { echo "no profile was written (did the services exit cleanly?)" >&2; exit 1; }
"$profdata" merge -o "$pgo/merged.profdata" "${raw[@]}"
# The profile's content in its name: cargo tracks RUSTFLAGS, not the file
# they name, so a new profile must change the flags to rebuild with it.
profile="$pgo/profile-$(sha256sum "$pgo/merged.profdata" | cut -c1-16).profdata"
find "$pgo" -maxdepth 1 -name 'profile-*.profdata' ! -path "$profile" -delete
mv "$pgo/merged.profdata" "$profile"

echo "PGO 4/4: optimised build" >&2
CARGO_TARGET_DIR=target/pgo-use RUSTFLAGS="-Cprofile-use=$profile" \
  cargo build --release --locked --target "$host" "${packages[@]}"
for bin in tally-counter tally-gateway tally-reference; do
  cp "target/pgo-use/$host/release/$bin" "$out/$bin"
done
echo "PGO build: $out (profile $profile)" >&2

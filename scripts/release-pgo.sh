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
#      the chain alone under increments with idempotency keys and batch
#      increments, so that those paths are not left without a profile.
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
#   scripts/release-pgo.sh        (needs redis-server, wrk and rustup's llvm-tools)
#   SECONDS_PER_LOAD=5 (how long each training load runs)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

seconds=${SECONDS_PER_LOAD:-5}
require_tools redis-server wrk python3
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
stop_pids "$gateway_pid" "$counter_pid" "$ref_pid"

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

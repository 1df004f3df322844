#!/usr/bin/env bash
# The chain (tally-gateway → tally-counter → Redis) next to a one-process
# reference (tally-reference: axum handler → Redis over one multiplexed
# connection) in one run, both with DEFAULT settings, for increments and
# reads. For each scenario: req/s, p50/p99 and the SERVER CPU PER REQUEST —
# user+sys from /proc/<pid>/stat of every server process (Redis included,
# the load generator excluded), the figure to optimise: throughput on a
# shared 2-core machine is noisy, CPU per request much less so. The
# reference and the chain take each scenario in turns, reference, chain,
# chain, reference, and each is reported over its two runs: the place in
# the order carried an offset of its own (the reference cost 7–10 % more
# when it ran first in `make bench-ab`), and a steady drift falls equally
# on both.
#
# The binaries measured are the build that ships, the profile-guided one
# (scripts/release-pgo.sh, about 25 minutes on two cores), for the chain
# and the reference alike; BUILD=plain measures the plain release build
# (target/release) instead, and BIN_DIR=<dir> the binaries already in
# <dir> (tally-counter, tally-gateway, tally-reference), building nothing.
#
#   SECONDS_PER_RUN=10 BUILD=pgo|plain [BIN_DIR=dir] scripts/bench-compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
require_tools redis-server redis-cli wrk python3 openssl

build=${BUILD:-pgo}
case $build in
  pgo) [ -n "${BIN_DIR:-}" ] || { scripts/release-pgo.sh; BIN_DIR=target/pgo/release; } ;;
  plain) [ -n "${BIN_DIR:-}" ] || { cargo build --release -q -p tally-counter -p tally-gateway -p tally-bench; BIN_DIR=target/release; } ;;
  *) echo "BUILD must be pgo or plain" >&2; exit 2 ;;
esac
export BIN_DIR REFERENCE=$BIN_DIR/tally-reference
work=$(mktemp -d)
trap kill_started EXIT
tick_us=$((1000000 / $(getconf CLK_TCK)))

# run_wrk <name> <url> [lua] -- pids...: one wrk run; appends a CSV row
# name,requests,rps,p50_ms,p99_ms,cpu_us_per_request to $work/rows.csv
# (the report pools the rows of one name: see `turns`).
run_wrk() {
  local name=$1 url=$2 script=$3; shift 4
  local before after args=(-t2 -c100 -d"${SECONDS_PER_RUN}s" --latency)
  [ -n "$script" ] && args+=(-s "scripts/wrk/$script")
  [ -n "${WRK_HEADER:-}" ] && args+=(-H "$WRK_HEADER")
  before=$(cpu_ticks "$@")
  wrk "${args[@]}" "$url" >"$work/$name.txt"
  after=$(cpu_ticks "$@")
  python3 - "$name" "$work/$name.txt" "$((after - before))" "$tick_us" >>"$work/rows.csv" <<'PY'
import re, sys
name, path, ticks, tick_us = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
text = open(path).read()
def ms(v, unit):
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
lat = {p: ms(v, u) for p, v, u in re.findall(r"^\s+(50|99)(?:\.000)?%\s+([\d.]+)(us|ms|s)", text, re.M)}
requests = int(re.search(r"(\d+) requests in", text).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
bad = int(errors.group(1)) if errors else 0
print(f"{name},{requests},{rps:.0f},{lat.get('50', 0):.2f},{lat.get('99', 0):.2f},{ticks * tick_us / max(requests, 1):.1f},{bad}")
PY
}

# run_h2load <name> <url> -- pids...: one h2load run (HTTP/2: h2c for
# http://, ALPN h2 for https://), 100 connections x 10 concurrent streams,
# POSTing $work/h2.json; appends name,rps,mean,cpu_us_per_request,non_2xx
# to $work/h2.csv. Skipped where h2load is missing (Debian: nghttp2-client).
run_h2load() {
  local name=$1 url=$2 before after; shift 3
  command -v h2load >/dev/null || return 0
  before=$(cpu_ticks "$@")
  h2load -D "$SECONDS_PER_RUN" -t 2 -c 100 -m 10 -d "$work/h2.json" -H 'content-type: application/json' \
    "$url" >"$work/$name.txt"
  after=$(cpu_ticks "$@")
  python3 - "$name" "$work/$name.txt" "$((after - before))" "$tick_us" >>"$work/h2.csv" <<'PY'
import re, sys
name, text, ticks, tick_us = sys.argv[1], open(sys.argv[2]).read(), int(sys.argv[3]), int(sys.argv[4])
rps = float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", text).group(1))
done = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done", text).group(1))
ok = int(re.search(r"status codes: (\d+) 2xx", text).group(1))
mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", text).group(1)
print(f"{name},{rps:.0f},{mean},{ticks * tick_us / max(done, 1):.1f},{done - ok}")
PY
}

redis_port=$(free_port)
redis_pid=$(start_redis "$redis_port" "$work/redis.log")
pids+=("$redis_pid")

# The reference and the chain (default settings) on one Redis, both started
# first: each scenario then runs on the reference and at once on the chain,
# so the machine's drift (±15 % within minutes here) falls less between the
# two halves of one comparison than it would a whole phase apart.
ref_port=$(free_port)
ref_pid=$(start_reference "$redis_port" "$ref_port" "$work/reference.log")
pids+=("$ref_pid")
ref="http://127.0.0.1:$ref_port/api/v1/counter"
grpc_port=$(free_port); admin_port=$(free_port); http_port=$(free_port); nocache_port=$(free_port)
counter_pid=$(start_counter "$redis_port" "$grpc_port" "$admin_port" "$work/counter.log")
pids+=("$counter_pid")
gateway_pid=$(start_gateway "$http_port" "http://127.0.0.1:$grpc_port" "$work/gateway.log")
pids+=("$gateway_pid")
chain="http://127.0.0.1:$http_port/api/v1/counter"
# reference <scenario> <path> [lua] / on_chain <scenario> <path> [lua]: one
# run of a scenario on the reference or on the chain.
reference() { run_wrk "reference-$1" "$ref$2" "${3:-}" -- "$ref_pid" "$redis_pid"; }
on_chain() { run_wrk "chain-$1" "$chain$2" "${3:-}" -- "$gateway_pid" "$counter_pid" "$redis_pid"; }
# turns <scenario> <path> [lua]: the scenario in turns, reference, chain,
# chain, reference.
turns() { reference "$@"; on_chain "$@"; on_chain "$@"; reference "$@"; }
turns inc-hot /increment hot.lua
turns inc-keys /increment keys.lua
# The hot reads also on a fresh gateway (started now, nothing written
# through it), in turns with the write-worn one, to tell what the write
# runs left in the gateway from the machine's drift, which a fresh run
# minutes earlier could not.
fresh_port=$(free_port)
fresh_pid=$(start_gateway "$fresh_port" "http://127.0.0.1:$grpc_port" "$work/fresh.log")
pids+=("$fresh_pid")
fresh() {
  run_wrk chain-get-hot-fresh "http://127.0.0.1:$fresh_port/api/v1/counter/bench:hot/likes" "" -- \
    "$fresh_pid" "$counter_pid" "$redis_pid"
}
reference get-hot /bench:hot/likes
on_chain get-hot /bench:hot/likes
fresh
fresh
on_chain get-hot /bench:hot/likes
reference get-hot /bench:hot/likes
stop_pids "$fresh_pid"
turns get-keys / get-keys.lua
ref_rss=$(peak_rss_mib "$ref_pid")
stop_pids "$ref_pid"
# HTTP/2 without TLS (h2c, prior knowledge) to the same gateway.
printf '{"resource_id":"bench:hot","counter_type":"likes"}' >"$work/h2.json"
run_h2load chain-inc-hot-h2c "$chain/increment" -- "$gateway_pid" "$counter_pid" "$redis_pid"
gateway_rss=$(peak_rss_mib "$gateway_pid")
stop_pids "$gateway_pid"
nocache_pid=$(TALLY_CACHE_TTL_MS=0 start_gateway "$nocache_port" "http://127.0.0.1:$grpc_port" "$work/nocache.log")
pids+=("$nocache_pid")
uncached="http://127.0.0.1:$nocache_port/api/v1/counter"
run_wrk chain-get-hot-uncached "$uncached/bench:hot/likes" "" -- "$nocache_pid" "$counter_pid" "$redis_pid"
run_wrk chain-get-keys-uncached "$uncached/" get-keys.lua -- "$nocache_pid" "$counter_pid" "$redis_pid"
stop_pids "$nocache_pid"
# The cost of API keys: a gateway with TALLY_AUTH=api_keys, every request
# carrying a Bearer key (SHA-256 and a constant-time comparison each).
key="bench-key-$$-$RANDOM"
write_api_keys "$work/keys.yaml" "$key"
auth_port=$(free_port)
auth_pid=$(TALLY_AUTH=api_keys TALLY_AUTH_KEYS_FILE="$work/keys.yaml" \
  start_gateway "$auth_port" "http://127.0.0.1:$grpc_port" "$work/auth.log")
pids+=("$auth_pid")
WRK_HEADER="Authorization: Bearer $key" run_wrk chain-inc-hot-keys-auth \
  "http://127.0.0.1:$auth_port/api/v1/counter/increment" hot.lua -- "$auth_pid" "$counter_pid" "$redis_pid"
counter_rss=$(peak_rss_mib "$counter_pid")
stop_pids "$auth_pid" "$gateway_pid" "$counter_pid"

# The cost of TLS on every hop: HTTPS from wrk to the gateway, mutual TLS
# from the gateway to the counter, TLS with a client certificate from the
# counter to Redis. wrk keeps its connections, as production clients do,
# so this is the steady-state cost (handshakes are not in it).
certs="$work/certs"
make_test_certs "$certs"
tls_redis_port=$(free_port)
tls_redis_pid=$(start_tls_redis "$certs" "$tls_redis_port" "$work/redis-tls.log")
pids+=("$tls_redis_pid")
read -r tls_http_port tls_gateway_pid tls_counter_pid < <(start_tls_chain "$certs" "$tls_redis_port" "$work/tls")
pids+=("$tls_gateway_pid" "$tls_counter_pid")
run_wrk chain-inc-hot-tls "https://127.0.0.1:$tls_http_port/api/v1/counter/increment" hot.lua -- \
  "$tls_gateway_pid" "$tls_counter_pid" "$tls_redis_pid"
run_wrk chain-get-hot-tls "https://127.0.0.1:$tls_http_port/api/v1/counter/bench:hot/likes" "" -- \
  "$tls_gateway_pid" "$tls_counter_pid" "$tls_redis_pid"
run_h2load chain-inc-hot-h2-tls "https://127.0.0.1:$tls_http_port/api/v1/counter/increment" -- \
  "$tls_gateway_pid" "$tls_counter_pid" "$tls_redis_pid"
stop_pids "$tls_gateway_pid" "$tls_counter_pid" "$tls_redis_pid"

# The counter on a Redis Cluster of three masters (on the same two cores):
# 100k-key increments, each batch split by hash slot into single-slot
# pipelines sent at once (counter/src/store/cluster.rs). The reference speaks to one Redis only, so this row stands beside
# the chain on the standalone Redis.
read -r cluster_url cluster_pids < <(start_redis_cluster "$work/cluster")
read -ra cluster_pids <<<"$cluster_pids"
pids+=("${cluster_pids[@]}")
cluster_grpc=$(free_port); cluster_admin=$(free_port); cluster_http=$(free_port)
cluster_counter_pid=$(start_counter "$cluster_url" "$cluster_grpc" "$cluster_admin" "$work/counter-cluster.log")
pids+=("$cluster_counter_pid")
cluster_gateway_pid=$(start_gateway "$cluster_http" "http://127.0.0.1:$cluster_grpc" "$work/gateway-cluster.log")
pids+=("$cluster_gateway_pid")
run_wrk chain-inc-keys-cluster "http://127.0.0.1:$cluster_http/api/v1/counter/increment" keys.lua -- \
  "$cluster_gateway_pid" "$cluster_counter_pid" "${cluster_pids[@]}"

mkdir -p bench-results
report="bench-results/compare-$(date -u +%Y%m%d-%H%M%S).md"
python3 - "$work/rows.csv" "$SECONDS_PER_RUN" "$ref_rss" "$gateway_rss" "$counter_rss" "$build" >"$report" <<'PY'
import sys
runs = {}
for line in open(sys.argv[1]):
    name, requests, rps, p50, p99, cpu, bad = line.strip().split(",")
    runs.setdefault(name, []).append(
        dict(requests=int(requests), rps=float(rps), p50=float(p50), p99=float(p99), cpu=float(cpu), bad=int(bad)))
def pooled(group):
    """The runs of one name as one: req/s and latencies averaged, CPU per request over every request."""
    requests = sum(r["requests"] for r in group)
    mean = lambda field: sum(r[field] for r in group) / len(group)
    cpu = sum(r["cpu"] * r["requests"] for r in group) / max(requests, 1)
    return dict(requests=requests, rps=mean("rps"), p50=mean("p50"), p99=mean("p99"), cpu=cpu,
                bad=sum(r["bad"] for r in group), runs=len(group))
rows = {name: pooled(group) for name, group in runs.items()}
seconds, ref_rss, gw_rss, counter_rss, build = sys.argv[2:]
print("# Chain vs one-process reference — default settings, same run\n")
print("Build: " + ("profile-guided (`scripts/release-pgo.sh`), the chain and the reference alike"
                   if build == "pgo" else "plain release build (`BUILD=plain`), the chain and the reference alike") + ".\n")
print(f"wrk -t2 -c100 -d{seconds}s --latency on loopback; CPU per request = user+sys of every server process")
print("(Redis included, wrk excluded) over the run ÷ requests. Lower is better. The first four scenarios ran")
print("in turns (reference, chain, chain, reference); each of their rows is over its two runs (req/s and")
print("latencies their mean, CPU over every request of both).\n")
print("| scenario | system | req/s | p50 ms | p99 ms | server CPU µs/req | chain ÷ reference (CPU) | chain ÷ reference (req/s) | non-2xx |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
pairs = [("inc-hot", "increment, one hot key"), ("inc-keys", "increment, 100k keys"), ("get-hot", "GET, one hot key"),
         ("get-keys", "GET, 10k keys")]
for key, title in pairs:
    ref = rows[f"reference-{key}"]
    for system in ["reference", "chain", "chain-uncached"]:
        row = rows.get(f"{system}-{key}" if system != "chain-uncached" else f"chain-{key}-uncached")
        if row is None:
            continue
        label = {"reference": "reference", "chain": "chain (after the writes)" if key.startswith("get") else "chain",
                 "chain-uncached": "chain, cache off"}[system]
        cpu_ratio = "" if system == "reference" else f"{row['cpu'] / ref['cpu']:.2f}"
        rps_ratio = "" if system == "reference" else f"{row['rps'] / ref['rps']:.2f}"
        print(f"| {title} | {label} | {row['rps']:,.0f} | {row['p50']:.2f} | {row['p99']:.2f} | {row['cpu']:.1f} | {cpu_ratio} | {rps_ratio} | {row['bad']} |")
auth, plain = rows["chain-inc-hot-keys-auth"], rows["chain-inc-hot"]
print(f"\nIncrement, one hot key, every request with an API key (`TALLY_AUTH=api_keys`): {auth['rps']:,.0f} req/s, "
      f"p99 {auth['p99']:.2f} ms, {auth['cpu']:.1f} µs/req ({auth['cpu'] / plain['cpu']:.2f} × the chain without keys), "
      f"non-2xx {auth['bad']}.")
for key, title in [("inc-hot", "Increment, one hot key"), ("get-hot", "GET, one hot key")]:
    tls, plain = rows[f"chain-{key}-tls"], rows[f"chain-{key}"]
    print(f"\n{title}, TLS on every hop (HTTPS, mutual TLS to the counter, TLS to Redis): {tls['rps']:,.0f} req/s "
          f"({tls['rps'] / plain['rps']:.2f} × plain text), p99 {tls['p99']:.2f} ms, {tls['cpu']:.1f} µs/req "
          f"({tls['cpu'] / plain['cpu']:.2f} × plain text), non-2xx {tls['bad']}.")
cluster, standalone = rows["chain-inc-keys-cluster"], rows["chain-inc-keys"]
print(f"\nIncrement, 100k keys, the counter on a Redis Cluster (three masters, on the same cores): "
      f"{cluster['rps']:,.0f} req/s ({cluster['rps'] / standalone['rps']:.2f} × on one Redis), p99 {cluster['p99']:.2f} ms, "
      f"{cluster['cpu']:.1f} µs/req, the three Redis included ({cluster['cpu'] / standalone['cpu']:.2f} × on one Redis), "
      f"non-2xx {cluster['bad']}.")
import os
h2_rows = os.path.join(os.path.dirname(sys.argv[1]), "h2.csv")
h2 = {}
if os.path.exists(h2_rows):
    for line in open(h2_rows):
        name, rps, mean, cpu, bad = line.strip().split(",")
        h2[name] = dict(rps=float(rps), mean=mean, cpu=float(cpu), bad=int(bad))
for name, title, base in [("chain-inc-hot-h2c", "without TLS (h2c, prior knowledge)", "chain-inc-hot"),
                          ("chain-inc-hot-h2-tls", "with TLS on every hop (h2 by ALPN)", "chain-inc-hot-tls")]:
    row, http1 = h2.get(name), rows[base]
    if row is None:
        print(f"\nHTTP/2 {title}: h2load is not installed (Debian: nghttp2-client); not measured.")
        continue
    print(f"\nIncrement, one hot key, over HTTP/2 {title}; h2load, 100 connections x 10 streams: {row['rps']:,.0f} req/s "
          f"({row['rps'] / http1['rps']:.2f} x HTTP/1.1 the same way), mean {row['mean']}, {row['cpu']:.1f} µs/req "
          f"({row['cpu'] / http1['cpu']:.2f} x HTTP/1.1), non-2xx {row['bad']}.")
fresh, after = rows["chain-get-hot-fresh"], rows["chain-get-hot"]
print(f"\nGET, one hot key, the gateway after the write runs: {after['rps']:,.0f} req/s, {after['cpu']:.1f} µs/req; "
      f"a fresh gateway in turns with it (worn, fresh, fresh, worn; nothing written through the fresh one): {fresh['rps']:,.0f} req/s, "
      f"{fresh['cpu']:.1f} µs/req; after ÷ fresh: {after['rps'] / fresh['rps']:.2f} × its req/s.")
print(f"\nPeak RSS: reference {ref_rss} MiB, gateway {gw_rss} MiB, counter {counter_rss} MiB.")
PY
cat "$report"
echo "report: $report"

#!/usr/bin/env bash
# Two builds of the chain, measured interleaved: the reference, chain A and
# chain B take turns on one Redis for ROUNDS rounds (each round in another
# order of the three), so every pair of runs sees the same machine. On the
# shared 2-core development machine the speed drifts by ±15 % within minutes (see docs/bench/performance-log.md), more
# than most single changes; separate runs cannot tell such a change, turns
# taken minutes apart can. Per run: req/s, p99, server CPU per request of
# each process (user+sys from /proc, wrk excluded) and the share of the
# machine's CPU time left idle (/proc/stat: a chain whose stages wait on
# each other leaves the cores idle where a CPU-bound one would not); then
# the means, B ÷ A (of the means and per round: how many rounds B was
# cheaper and faster), and for each chain against the reference in the
# same round (the issue's targets): CPU per request, and in how many
# rounds its req/s was at or above and its p99 at or under the reference's.
#
#   scripts/bench-ab.sh A_DIR B_DIR
#     A_DIR, B_DIR: directories holding release tally-counter and tally-gateway
#     (keep a copy of target/release before rebuilding); the reference is
#     target/release/tally-reference, or the binary REFERENCE names.
#   ROUNDS=6 (a multiple of six: every order once) SECONDS_PER_RUN=8
#   SCENARIO=hot|keys (increments, wrk script
#   scripts/wrk/<SCENARIO>.lua) | get-hot|get-keys (GET of one hot counter
#   or of 10k counters, after 5 s of 100k-key writes); CACHE=off starts
#   both gateways with the read cache off (TALLY_CACHE_TTL_MS=0).
#   TLS=on: both chains with TLS on every hop (HTTPS, mutual TLS to the
#   counter, TLS to Redis), each on its own TLS redis-server;
#   STORE=cluster: both counters on one Redis Cluster of three masters.
#   SCHED=on: `perf sched record` for 2 s in the middle of every run, and
#   the idle share split by scripts/idle_imbalance.py: how much of it a
#   core idled while another had a task waiting (the recording costs CPU
#   of its own, so compare such runs only with each other).
#   The reference stays on plain HTTP and one plain Redis either way: its
#   rows are then a yardstick of the machine's drift, not a like-for-like
#   comparison.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

[ $# -eq 2 ] || { echo "usage: $0 A_DIR B_DIR" >&2; exit 2; }
a_dir=$1 b_dir=$2
rounds=${ROUNDS:-6} seconds=${SECONDS_PER_RUN:-8} scenario=${SCENARIO:-hot}
cache_ttl=5000
[ "${CACHE:-on}" = off ] && cache_ttl=0
require_tools redis-server redis-cli wrk python3 openssl
work=$(mktemp -d)
trap kill_started EXIT
tick_us=$((1000000 / $(getconf CLK_TCK)))

redis_port=$(free_port)
redis_pid=$(start_redis "$redis_port" "$work/redis.log")
pids+=("$redis_pid")
ref_port=$(free_port)
ref_pid=$(start_reference "$redis_port" "$ref_port" "$work/reference.log")
pids+=("$ref_pid")

# The chains' store: the reference's Redis, a Redis Cluster, or (TLS=on)
# a TLS redis-server per chain; `chain` prints its pids comma-separated
# (their CPU is one column of the report).
store=$redis_port chain_scheme=http
if [ "${TLS:-off}" = on ] && [ "${STORE:-redis}" = cluster ]; then
  echo "TLS=on and STORE=cluster cannot be combined (the TLS chains each get their own TLS redis-server)" >&2
  exit 2
fi
case ${STORE:-redis} in
  redis) ;;
  cluster)
    read -r store cluster_pids < <(start_redis_cluster "$work/cluster")
    read -ra cluster_pids <<<"$cluster_pids"
    pids+=("${cluster_pids[@]}")
    ;;
  *) echo "STORE must be redis or cluster" >&2; exit 2 ;;
esac
[ "${TLS:-off}" = on ] && { make_test_certs "$work/certs"; chain_scheme=https; }

# chain <name> <dir>: starts a counter and a gateway from <dir>; prints
# "http_port gateway_pid counter_pid store_pids".
chain() {
  local grpc admin http counter gateway tls_port tls_redis
  if [ "${TLS:-off}" = on ]; then
    tls_port=$(free_port)
    tls_redis=$(start_tls_redis "$work/certs" "$tls_port" "$work/redis-tls-$1.log")
    read -r http gateway counter < <(BIN_DIR=$2 TALLY_CACHE_TTL_MS=$cache_ttl \
      start_tls_chain "$work/certs" "$tls_port" "$work/tls-$1")
    echo "$http $gateway $counter $tls_redis"
    return
  fi
  grpc=$(free_port); admin=$(free_port); http=$(free_port)
  counter=$(BIN_DIR=$2 start_counter "$store" "$grpc" "$admin" "$work/counter-$1.log")
  gateway=$(BIN_DIR=$2 TALLY_CACHE_TTL_MS=$cache_ttl start_gateway "$http" "http://127.0.0.1:$grpc" "$work/gateway-$1.log")
  local store_pids=$redis_pid
  [ "${STORE:-redis}" = cluster ] && store_pids=$(IFS=,; echo "${cluster_pids[*]}")
  echo "$http $gateway $counter $store_pids"
}
read -r a_port a_gateway a_counter a_store < <(chain a "$a_dir")
pids+=("$a_gateway" "$a_counter" ${a_store//,/ })
read -r b_port b_gateway b_counter b_store < <(chain b "$b_dir")
pids+=("$b_gateway" "$b_counter" ${b_store//,/ })

# load <port> <seconds> [scheme]: the scenario's wrk run on the chain or reference at <port>.
load() {
  local base="${3:-http}://127.0.0.1:$1/api/v1/counter"
  case $scenario in
    get-hot) wrk -t2 -c100 -d"$2s" --latency "$base/bench:hot/likes" ;;
    get-keys) wrk -t2 -c100 -d"$2s" --latency -s scripts/wrk/get-keys.lua "$base/" ;;
    *) wrk -t2 -c100 -d"$2s" --latency -s "scripts/wrk/$scenario.lua" "$base/increment" ;;
  esac
}
# The read scenarios read counters written first, in every store read: the
# reference's Redis, and the chains' own when they have one (TLS: one each;
# a Redis Cluster: shared by both).
write_counters() {
  wrk -t2 -c100 -d5s -s scripts/wrk/keys.lua "$1://127.0.0.1:$2/api/v1/counter/increment" >/dev/null
}
case $scenario in
  get-*)
    write_counters http "$ref_port"
    if [ "${TLS:-off}" = on ] || [ "${STORE:-redis}" = cluster ]; then
      for port in "$a_port" "$b_port"; do write_counters "$chain_scheme" "$port"; done
    fi
    ;;
esac

# The machine's idle and total CPU time so far (/proc/stat, all cores, in ticks).
machine_ticks() {
  awk '/^cpu /{print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat
}

[ "${SCHED:-off}" = on ] && require_tools perf
# run <system> <port> <pids...>: one wrk run; appends system,rps,requests,p99,idle %,
# the recording's idle and waiting shares (SCHED=on: "idle;waiting", else -),
# CPU ticks of each pid to rows.csv.
run() {
  local system=$1 port=$2; shift 2
  local before=() pid i=0 row idle0 total0 idle1 total1 load_pid imbalanced=-
  local scheme=$chain_scheme
  [ "$system" = reference ] && scheme=http
  # A pid argument may be several, comma-separated: one column, summed.
  for pid in "$@"; do before+=("$(cpu_ticks ${pid//,/ })"); done
  read -r idle0 total0 < <(machine_ticks)
  load "$port" "$seconds" "$scheme" >"$work/wrk.txt" &
  load_pid=$!
  if [ "${SCHED:-off}" = on ]; then
    sleep $((seconds / 2 - 1))
    perf sched record -q -o "$work/sched.data" -- sleep 2 >/dev/null 2>&1
    imbalanced=$(scripts/idle_imbalance.py "$work/sched.data" | tr ' ' ';')
  fi
  wait "$load_pid"
  read -r idle1 total1 < <(machine_ticks)
  row="$system,$(grep -oP 'Requests/sec:\s+\K[\d.]+' "$work/wrk.txt"),$(grep -oP '\d+(?= requests in)' "$work/wrk.txt"),$(grep -oP '^\s+99%\s+\K\S+' "$work/wrk.txt")"
  row+=",$((1000 * (idle1 - idle0) / (total1 - total0))),$imbalanced"
  for pid in "$@"; do row+=",$(($(cpu_ticks ${pid//,/ }) - before[i]))"; i=$((i + 1)); done
  echo "$row" >>"$work/rows.csv"
}
load "$ref_port" 2 >/dev/null # warm-up
for port in "$a_port" "$b_port"; do load "$port" 2 "$chain_scheme" >/dev/null; done
# Every round runs the three in another order, through all six (reference,
# A, B; reference, B, A; A, B, reference; B, A, reference; A, reference,
# B; B, reference, A), so in six rounds each takes each place, and follows
# each other, equally often. In a fixed order the place carried an offset
# of its own, as large as a change (one build as both A and B: B ÷ A 0.952;
# one build with and without a setting: 0.958 one way round, 0.955 the
# other); A and B swapping alone brought one build as both to 0.978, and
# left the reference always first.
orders=("reference A B" "reference B A" "A B reference" "B A reference" "A reference B" "B reference A")
for round in $(seq "$rounds"); do
  for system in ${orders[$(((round - 1) % 6))]}; do
    case $system in
      reference) run reference "$ref_port" "$ref_pid" "$redis_pid" ;;
      A) run A "$a_port" "$a_gateway" "$a_counter" "$a_store" ;;
      B) run B "$b_port" "$b_gateway" "$b_counter" "$b_store" ;;
    esac
  done
done

python3 - "$work/rows.csv" "$tick_us" "$scenario" "$a_dir" "$b_dir" "${CACHE:-on}" "$(reference_binary)" \
  "${TLS:-off}" "${STORE:-redis}" "${SCHED:-off}" <<'PY'
import statistics
import sys
from collections import defaultdict
path, tick_us, scenario, a_dir, b_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
cache = ", read cache off" if sys.argv[6] == "off" else ""
cache += ", chains with TLS on every hop" if sys.argv[8] == "on" else ""
cache += ", chains on a Redis Cluster of three masters" if sys.argv[9] == "cluster" else ""
what = f"increments ({scenario}.lua)" if not scenario.startswith("get-") else f"reads ({scenario})"
print(f"# A/B, {what}{cache}, interleaved: A = {a_dir}, B = {b_dir}, reference = {sys.argv[7]}\n")
idle_head = "idle; in the recording, idle and idle while another core had a task waiting" if sys.argv[10] == "on" else "idle"
print(f"| run | system | req/s | p99 ms | {idle_head} | server CPU µs/req | per process µs/req |")
print("|---:|---|---:|---:|---:|---:|---|")
totals = defaultdict(list)
p99s = defaultdict(list)
idles = defaultdict(list)
imbalances = defaultdict(list)
rates = defaultdict(list)

def ms(text):
    """wrk's latency (e.g. 870.00us, 6.10ms, 1.02s) in milliseconds."""
    for unit, scale in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    raise ValueError(f"unknown latency {text!r}")

for n, line in enumerate(open(path)):
    system, rps, requests, p99, idle, imbalanced, *ticks = line.strip().split(",")
    p99s[system].append(ms(p99))
    rates[system].append(float(rps))
    per = [int(t) * tick_us / max(int(requests), 1) for t in ticks]
    totals[system].append(sum(per))
    names = ["reference", "Redis"] if system == "reference" else ["gateway", "counter", "Redis"]
    detail = ", ".join(f"{name} {v:.1f}" for name, v in zip(names, per))
    idles[system].append(int(idle) / 10)
    shown = f"{int(idle) / 10:.1f} %"
    if imbalanced != "-":
        recorded, waiting = (float(v) for v in imbalanced.split(";"))
        imbalances[system].append((recorded, waiting))
        shown += f"; recorded {recorded:.1f} %, {waiting:.1f} % with a task waiting"
    print(f"| {n // 3 + 1} | {system} | {float(rps):,.0f} | {ms(p99):.2f} | {shown} | {sum(per):.1f} | {detail} |")
mean = {s: sum(v) / len(v) for s, v in totals.items()}
print()
for s in ("reference", "A", "B"):
    idle = sum(idles[s]) / len(idles[s])
    waiting = ""
    if imbalances[s]:
        recorded = sum(r for r, _ in imbalances[s]) / len(imbalances[s])
        with_waiting = sum(w for _, w in imbalances[s]) / len(imbalances[s])
        waiting = f"; in the recordings idle {recorded:.1f} %, {with_waiting:.1f} % while another core had a task waiting"
    print(f"- {s}: mean {mean[s]:.1f} µs/req" + ("" if s == "reference" else f" ({mean[s] / mean['reference']:.2f} × the reference)") + f", machine idle {idle:.1f} %{waiting}")
print(f"- B ÷ A: {mean['B'] / mean['A']:.3f}")
# Per round, each pair of runs minutes apart on the same machine: a change
# that is real shows in most rounds, not only in the means.
ratios = [b / a for a, b in zip(totals["A"], totals["B"])]
cheaper = sum(r < 1 for r in ratios)
print(f"- B ÷ A per round: median {statistics.median(ratios):.3f}, {min(ratios):.3f}–{max(ratios):.3f}; B cheaper in {cheaper} of {len(ratios)} rounds")
faster = sum(b >= a for a, b in zip(rates["A"], rates["B"]))
print(f"- B's req/s at or above A's in {faster} of {len(rates['B'])} rounds")
for s in ("A", "B"):
    cpu = [c / r for c, r in zip(totals[s], totals["reference"])]
    rate = [c / r for c, r in zip(rates[s], rates["reference"])]
    under = sum(c <= r for c, r in zip(p99s[s], p99s["reference"]))
    print(
        f"- {s} ÷ the reference per round: CPU median {statistics.median(cpu):.3f}, req/s median"
        f" {statistics.median(rate):.3f}; req/s at or above the reference's in {sum(r >= 1 for r in rate)} of"
        f" {len(rate)} rounds, p99 at or under it in {under} of {len(p99s[s])}"
    )
PY

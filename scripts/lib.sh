# Helpers shared by tally's scripts (sourced, not run).

# Pids of the processes a script started; `kill_started` (the scripts' EXIT
# trap) stops them all, then removes the script's `$work` directory (its
# reports are written outside it, under bench-results/).
pids=()
kill_started() {
  # stop_pids, not `wait`: most are started in $(...) subshells, so they are
  # not this shell's children, and would otherwise still write their logs
  # into $work while it is removed.
  stop_pids "${pids[@]}"
  if [ -n "${work:-}" ] && [ -d "$work" ]; then rm -rf "$work"; fi
  rm -f "${TMPDIR:-/tmp}/tally-ports-$$"
}

# Exits with an install hint unless every tool named is on PATH.
require_tools() {
  local missing=()
  for tool in "$@"; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "missing: ${missing[*]} (Debian: apt-get install -y redis-server redis-tools hey wrk python3)" >&2
    exit 1
  fi
}

# A free TCP port on loopback, chosen at random below the kernel's ephemeral
# range minus 10000 (a Redis Cluster node also listens on its port + 10000):
# a port from that range, once released, can become the local port of the
# next outgoing connection before the service meant to listen on it binds
# it (testkit's free_port says the same). The ports this script was given
# are kept in a file (removed by kill_started), so none is given twice.
free_port() {
  python3 - "${TMPDIR:-/tmp}/tally-ports-$$" <<'PY'
import random, socket, sys
taken_file = sys.argv[1]
try:
    start = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
except (OSError, ValueError, IndexError):
    start = 32768
try:
    taken = set(open(taken_file).read().split())
except OSError:
    taken = set()
high = max(start - 10000, 11000)
for _ in range(1000):
    port = random.randrange(10000, high)
    if str(port) in taken:
        continue
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
    except OSError:
        continue
    with open(taken_file, "a") as f:
        f.write("%d\n" % port)
    print(port)
    break
else:
    raise SystemExit("no free loopback port below %d" % high)
PY
}

# Waits (up to 30 s) until a log file contains a pattern (at least $3 times,
# default once); the services print a "listening" line once they accept
# connections, the gateway a "healthy=true" line per warmed-up endpoint.
wait_for_log() {
  local file=$1 pattern=$2 times=${3:-1} seen
  for _ in $(seq 300); do
    seen=$(grep -c "$pattern" "$file" 2>/dev/null || true)
    [ "${seen:-0}" -ge "$times" ] && return 0
    sleep 0.1
  done
  echo "timed out waiting for '$pattern' in $file:" >&2
  cat "$file" >&2
  return 1
}

# Peak resident memory (VmHWM) of a process, in MiB.
peak_rss_mib() {
  awk '/VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || echo "?"
}

# Current resident memory (VmRSS) of a process, in MiB.
rss_mib() {
  awk '/VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || echo "?"
}

# Starts a throwaway redis-server on $1; prints its pid.
start_redis() {
  local port=$1 log=$2
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --logfile "$log" --daemonize no >/dev/null 2>&1 &
  local pid=$!
  wait_for_log "$log" "Ready to accept connections" >&2
  echo "$pid"
}

# Starts a Redis Cluster of three masters on loopback (cluster-enabled
# redis-servers joined by `redis-cli --cluster create`), their files and
# logs in directory $1; waits until every node reports cluster_state:ok and
# prints "url pid pid pid", url being the counter's redis+cluster:// store.
start_redis_cluster() {
  local dir=$1 port nodes=() node_pids=() ok
  mkdir -p "$dir"
  for _ in 1 2 3; do
    # A node also listens on its port + 10000 (the cluster bus): free_port
    # keeps both below the ephemeral range.
    port=$(free_port)
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --cluster-enabled yes \
      --cluster-config-file "$dir/nodes-$port.conf" --logfile "$dir/redis-$port.log" --daemonize no >/dev/null 2>&1 &
    node_pids+=("$!")
    wait_for_log "$dir/redis-$port.log" "Ready to accept connections" >&2
    nodes+=("127.0.0.1:$port")
  done
  if ! redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$dir/create.log" 2>&1; then
    cat "$dir/create.log" >&2
    return 1
  fi
  # Each node flips to cluster_state:ok shortly after the create returns;
  # nothing to wait on but the state itself.
  for node in "${nodes[@]}"; do
    ok=
    for _ in $(seq 300); do
      redis-cli -p "${node#*:}" cluster info | grep -q "cluster_state:ok" && { ok=1; break; }
      sleep 0.1
    done
    [ -n "$ok" ] || { echo "Redis Cluster node $node never reached cluster_state:ok" >&2; return 1; }
  done
  echo "redis+cluster://$(IFS=,; echo "${nodes[*]}") ${node_pids[*]}"
}

# Starts a redis-server with TLS only, on port $2, requiring client
# certificates signed by the CA in directory $1 (make_test_certs), logging
# to $3; prints its pid.
start_tls_redis() {
  local certs=$1 port=$2 log=$3
  redis-server --port 0 --bind 127.0.0.1 --save "" --appendonly no --logfile "$log" --daemonize no \
    --tls-port "$port" --tls-cert-file "$certs/server.crt" --tls-key-file "$certs/server.key" \
    --tls-ca-cert-file "$certs/ca.crt" --tls-auth-clients yes >/dev/null 2>&1 &
  local pid=$!
  wait_for_log "$log" "Ready to accept connections" >&2
  echo "$pid"
}

# Starts a counter and a gateway ($BIN_DIR) with TLS on every hop, the
# certificates from directory $1 (make_test_certs): the counter stores in
# the TLS redis-server on port $2 with a client certificate and serves
# gRPC over mutual TLS; the gateway serves HTTPS (HTTP/1.1, and h2 by ALPN)
# and calls the counter with its client certificate. Logs go to
# $3-counter.log and $3-gateway.log. Prints "http_port gateway_pid counter_pid".
start_tls_chain() {
  local certs=$1 redis_port=$2 logs=$3 grpc admin http counter gateway
  grpc=$(free_port); admin=$(free_port); http=$(free_port)
  counter=$(TALLY_STORE_TLS_CA_FILE="$certs/ca.crt" TALLY_STORE_TLS_CERT_FILE="$certs/client.crt" \
    TALLY_STORE_TLS_KEY_FILE="$certs/client.key" TALLY_TLS_CERT_FILE="$certs/server.crt" \
    TALLY_TLS_KEY_FILE="$certs/server.key" TALLY_TLS_CLIENT_CA_FILE="$certs/ca.crt" \
    start_counter "rediss://127.0.0.1:$redis_port" "$grpc" "$admin" "$logs-counter.log")
  gateway=$(TALLY_COUNTER_TLS_CA_FILE="$certs/ca.crt" TALLY_COUNTER_TLS_CERT_FILE="$certs/client.crt" \
    TALLY_COUNTER_TLS_KEY_FILE="$certs/client.key" TALLY_TLS_CERT_FILE="$certs/server.crt" \
    TALLY_TLS_KEY_FILE="$certs/server.key" \
    start_gateway "$http" "https://127.0.0.1:$grpc" "$logs-gateway.log")
  echo "$http $gateway $counter"
}

# Writes the gateway's API-key file $1 (TALLY_AUTH_KEYS_FILE) with one key,
# $2, allowed to read and write (stored as its SHA-256, as the gateway wants).
write_api_keys() {
  printf 'keys:\n  - name: bench\n    sha256: %s\n    scopes: [read, write]\n' \
    "$(printf %s "$2" | sha256sum | cut -d' ' -f1)" >"$1"
}

# Starts the release tally-counter ($BIN_DIR, default target/release) on
# the store $1 (a Redis port on loopback, or a store URL), gRPC port $2,
# admin port $3, logging to $4 (extra settings come from the environment);
# waits until it listens and prints its pid.
start_counter() {
  local store=$1
  [[ $store == *://* ]] || store="redis://127.0.0.1:$store"
  TALLY_STORE="$store" TALLY_LISTEN="127.0.0.1:$2" TALLY_ADMIN_LISTEN="127.0.0.1:$3" \
    "${BIN_DIR:-target/release}/tally-counter" >"$4" 2>&1 &
  local pid=$!
  wait_for_log "$4" "tally-counter listening" >&2
  echo "$pid"
}

# The reference binary start_reference runs: $REFERENCE, by default the
# plain release build's.
reference_binary() {
  echo "${REFERENCE:-target/release/tally-reference}"
}

# Starts the release tally-reference (the one-process service the chain is
# measured against; reference_binary) on HTTP port $2 in front of Redis
# port $1, logging to $3; waits until it listens and prints its pid.
start_reference() {
  TALLY_REFERENCE_LISTEN="127.0.0.1:$2" TALLY_STORE="redis://127.0.0.1:$1" \
    "$(reference_binary)" >"$3" 2>&1 &
  local pid=$!
  wait_for_log "$3" "tally-reference listening" >&2
  echo "$pid"
}

# Starts the release tally-gateway ($BIN_DIR, default target/release) on
# HTTP port $1 in front of the counter
# endpoints $2 (comma-separated), logging to $3 (extra settings come from the
# environment); waits until $4 endpoints (default 1) warmed up and prints
# its pid.
start_gateway() {
  TALLY_LISTEN="127.0.0.1:$1" TALLY_ADMIN_LISTEN="${GATEWAY_ADMIN_LISTEN:-127.0.0.1:0}" TALLY_COUNTER_ENDPOINTS="$2" \
    "${BIN_DIR:-target/release}/tally-gateway" >"$3" 2>&1 &
  local pid=$!
  wait_for_log "$3" "healthy=true" "${4:-1}" >&2
  echo "$pid"
}

# CPU time (clock ticks, user+sys) of the given pids, summed.
cpu_ticks() {
  local total=0 pid
  for pid in "$@"; do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
  done
  echo "$total"
}

# SIGTERMs the given pids and waits (up to 30 s) until they are gone; works
# for processes started in a subshell, which `wait` cannot wait for.
stop_pids() {
  kill "$@" 2>/dev/null || true
  local pid
  for pid in "$@"; do
    for _ in $(seq 600); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.05
    done
  done
}

# Test certificates in directory $1 (openssl, P-256, valid 2 days): ca.crt,
# server.crt/key for 127.0.0.1 and localhost, client.crt/key.
make_test_certs() {
  local dir=$1 name
  mkdir -p "$dir"
  (
    cd "$dir"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.crt \
      -days 2 -subj "/CN=tally bench CA" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >server.ext
    printf 'extendedKeyUsage=clientAuth\n' >client.ext
    for name in server client; do
      openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$name.key" \
        -out "$name.csr" -subj "/CN=tally-$name" 2>/dev/null
      openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$name.crt" -days 2 \
        -extfile "$name.ext" 2>/dev/null
    done
  )
}

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

# A free TCP port on loopback.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
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

# Starts the release tally-counter ($BIN_DIR, default target/release) on
# Redis port $1, gRPC port $2, admin port $3, logging to $4 (extra settings
# come from the environment); waits until it listens and prints its pid.
start_counter() {
  TALLY_STORE="redis://127.0.0.1:$1" TALLY_LISTEN="127.0.0.1:$2" TALLY_ADMIN_LISTEN="127.0.0.1:$3" \
    "${BIN_DIR:-target/release}/tally-counter" >"$4" 2>&1 &
  local pid=$!
  wait_for_log "$4" "tally-counter listening" >&2
  echo "$pid"
}

# Starts the release tally-reference (the one-process service the chain is
# measured against; $REFERENCE, default target/release/tally-reference) on
# HTTP port $2 in front of Redis port $1, logging to $3; waits until it
# listens and prints its pid.
start_reference() {
  TALLY_REFERENCE_LISTEN="127.0.0.1:$2" TALLY_STORE="redis://127.0.0.1:$1" \
    "${REFERENCE:-target/release/tally-reference}" >"$3" 2>&1 &
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

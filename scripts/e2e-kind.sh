#!/usr/bin/env bash
# The real-environment end-to-end test: a kind cluster, the
# three images built from the Dockerfile, the operator installed from the
# Helm chart, the try-out Redis, and the CounterCluster of
# deploy/tryout/countercluster.yaml running the images just built. It then
#   1. sends 200 increments through the gateway's HTTP API (port-forward) and
#      checks each got its own value and the stored count is 200;
#   2. changes a live tunable (counter.batchSize 100 -> 250) and checks the
#      operator changes only the counters' ConfigMap — no pod restarts — and
#      every counter pod runs the new settings file (the SHA-256 it shows at
#      /api/v1/system/settings, read through the API server, equals the
#      ConfigMap's; SettingsApplied=True); then a restart-only one
#      (counter.commitMaxOps) and checks the operator rolls the counter
#      Deployment (and only it), the new pods' settings file has it, and the
#      count survived the roll;
#   3. deletes the CounterCluster and checks what it owned is garbage-collected.
#
#   4. runs a second CounterCluster on the operator's managed Redis
#      (store.managed: true: generated password, NetworkPolicy) and counts
#      through it.
#
# Needs docker (with a running engine), kind, kubectl, helm and curl. Where one
# is missing it says which and exits 0 with "e2e-kind: skipped (not run)" —
# or fails, with E2E_REQUIRED=1 (for CI machines that are meant to have them):
# the development machines have no Docker engine.
#
# Images are built without BuildKit provenance attestations and loaded from
# an image archive (kind cannot load multi-manifest images: kind issues
# #3795, #4236), under a tag unique to this run, so a reused cluster always
# runs the binaries just built.
#
# Environment:
#   E2E_REQUIRED=1     missing tools are a failure, not a skip
#   KEEP_CLUSTER=1     keep the kind cluster afterwards (default: delete it)
#   CLUSTER=name       kind cluster name (default tally-e2e; reused if it exists)
#   E2E_SKIP_BUILD=1   reuse the images of E2E_TAG (default: build them)
#   E2E_TAG=tag        image tag (default: e2e-<time>-<pid>, unique per run)
#   E2E_JAEGER=1       also deploy deploy/tryout/jaeger.yaml and keep the
#                      CounterCluster's telemetry (default: telemetry removed)
#   E2E_TIMEOUT=300    seconds for each rollout / readiness wait
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

# --- skip cleanly where the tools are absent -------------------------------
missing=()
for tool in docker kind kubectl helm curl; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
skip() {
  echo "e2e-kind: $*"
  if [ "${E2E_REQUIRED:-0}" = 1 ]; then
    echo "e2e-kind: FAIL: E2E_REQUIRED=1 and the test cannot run" >&2
    exit 1
  fi
  echo "e2e-kind: skipped (not run)"
  exit 0
}
if [ "${#missing[@]}" -gt 0 ]; then
  skip "missing tool(s): ${missing[*]}"
fi
if ! docker info >/dev/null 2>&1; then
  skip "'docker info' failed: no running Docker engine (or no permission to use it)"
fi

CLUSTER=${CLUSTER:-tally-e2e}
CTX="kind-$CLUSTER"
NS=tally
OPERATOR_NS=tally-system
TIMEOUT=${E2E_TIMEOUT:-300}
N=200
WORKERS=8
IMAGES=(tally-counter tally-gateway tally-operator)
TAG=${E2E_TAG:-e2e-$(date +%s)-$$}
work=$(mktemp -d)
base=""
pf_pid=""

k() { kubectl --context "$CTX" "$@"; }
step() { echo "==> $*"; }
fail() {
  echo "e2e-kind: FAIL: $*" >&2
  exit 1
}

# Retries "$@" once a second for up to $1 seconds; fails naming $2.
wait_until() {
  local seconds=$1 what=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || fail "timed out after ${seconds}s waiting for $what"
    sleep 1
  done
}

dump_state() {
  {
    echo "---- kubectl get all -n $NS"
    k get all -n "$NS" -o wide || true
    echo "---- CounterCluster"
    k get countercluster -n "$NS" -o yaml || true
    echo "---- recent events in $NS"
    k get events -n "$NS" --sort-by=.lastTimestamp 2>&1 | tail -n 40 || true
    echo "---- operator logs"
    k logs -n "$OPERATOR_NS" -l app.kubernetes.io/name=tally-operator --all-containers --tail=200 --prefix || true
    echo "---- tally pod logs (last 30 lines each)"
    k logs -n "$NS" -l app.kubernetes.io/instance=demo --all-containers --tail=30 --prefix --max-log-requests=10 || true
    if [ -f "$work/port-forward.log" ]; then
      echo "---- port-forward log"
      cat "$work/port-forward.log"
    fi
  } >&2
}

on_exit() {
  local rc=$?
  set +e
  kill_started
  if [ "$rc" -ne 0 ]; then
    dump_state
    echo "e2e-kind: failed (exit $rc)" >&2
  fi
  if [ "${KEEP_CLUSTER:-0}" = 1 ]; then
    echo "e2e-kind: keeping kind cluster '$CLUSTER' (kubectl --context $CTX; delete with: kind delete cluster --name $CLUSTER)"
  else
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1
  fi
  rm -rf "$work"
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

port() {
  if command -v python3 >/dev/null 2>&1; then free_port; else echo $((20000 + RANDOM % 20000)); fi
}

# (Re)starts `kubectl port-forward` to the gateway Service and waits until the
# gateway answers through it.
start_port_forward() {
  if [ -n "$pf_pid" ]; then kill "$pf_pid" 2>/dev/null || true; fi
  local p
  p=$(port)
  k -n "$NS" port-forward "svc/${GATEWAY_SERVICE:-demo-gateway}" "$p:8080" >"$work/port-forward.log" 2>&1 &
  pf_pid=$!
  pids+=("$pf_pid")
  base="http://127.0.0.1:$p"
  wait_until 60 "the gateway's /api/v1/health through port-forward" curl -fsS --max-time 2 "$base/api/v1/health"
}

# Restarts the port-forward if it no longer reaches the gateway (its pod
# went away).
ensure_port_forward() {
  curl -fsS --max-time 2 -o /dev/null "$base/api/v1/health" 2>/dev/null || start_port_forward
}

# current_value of a JSON response body.
current_value() {
  sed -n 's/.*"current_value":[[:space:]]*\(-\{0,1\}[0-9][0-9]*\).*/\1/p' <<<"$1"
}

# Succeeds when GET of the test counter answers 200 with current_value $1.
count_is() {
  local body
  body=$(curl -fsS --max-time 5 "$base/api/v1/counter/$rid/likes") || return 1
  [ "$(current_value "$body")" = "$1" ]
}

# Whether the CRD installed in the cluster has spec.<field> (older CRDs lack
# imagePullPolicy/telemetry, and kubectl rejects unknown fields).
crd_has_spec_field() {
  local type
  type=$(k get crd counterclusters.tally.dev \
    -o jsonpath="{.spec.versions[0].schema.openAPIV3Schema.properties.spec.properties.$1.type}")
  [ -n "$type" ]
}

# The value of setting $2 in the settings file of the ConfigMap $1 mounts.
configmap_setting() {
  k -n "$NS" get configmap "$1" -o jsonpath='{.data.settings\.env}' | sed -n "s/^$2=//p"
}

# The running counter pods (terminating ones left out), one name a line.
counter_pods() {
  k -n "$NS" get pods -l app.kubernetes.io/instance=demo,app.kubernetes.io/component=counter \
    -o go-template='{{range .items}}{{if not .metadata.deletionTimestamp}}{{.metadata.name}}{{"\n"}}{{end}}{{end}}'
}

# Whether every counter pod runs the settings file now in ConfigMap $1: the
# digest each shows on its admin port (through the API server's pod proxy,
# as the operator reads it) equals the file's SHA-256.
counters_run_configmap() {
  local want pod view
  want=$(k -n "$NS" get configmap "$1" -o jsonpath='{.data.settings\.env}' | sha256sum | cut -d' ' -f1)
  for pod in $(counter_pods); do
    view=$(k get --raw "/api/v1/namespaces/$NS/pods/$pod:8081/proxy/api/v1/system/settings") || return 1
    case $view in *"\"in_force\":\"$want\""*) ;; *) return 1 ;; esac
  done
}

settings_applied() {
  [ "$(k -n "$NS" get tcc demo -o jsonpath='{.status.conditions[?(@.type=="SettingsApplied")].status}')" = True ]
}

generation_above() {
  local now
  now=$(k -n "$NS" get deploy "$1" -o jsonpath='{.metadata.generation}') || return 1
  [ "$now" -gt "$2" ]
}

observed_generation_is_current() {
  local gen observed
  gen=$(k -n "$NS" get tcc demo -o jsonpath='{.metadata.generation}') || return 1
  observed=$(k -n "$NS" get tcc demo -o jsonpath='{.status.observedGeneration}') || return 1
  [ "$gen" = "$observed" ]
}

owned_objects() {
  k -n "$NS" get deployments,services,configmaps -l app.kubernetes.io/instance=demo -o name
}

owned_objects_gone() {
  local left
  left=$(owned_objects 2>/dev/null) || return 1
  [ -z "$left" ]
}

started=$SECONDS

# --- cluster ----------------------------------------------------------------
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  step "reusing kind cluster $CLUSTER"
else
  step "creating kind cluster $CLUSTER"
  kind create cluster --name "$CLUSTER" --wait 180s
fi
k cluster-info >/dev/null || fail "cannot reach the API server of kind cluster $CLUSTER (context $CTX)"

# --- images -----------------------------------------------------------------
for bin in "${IMAGES[@]}"; do
  if [ "${E2E_SKIP_BUILD:-0}" = 1 ]; then
    docker image inspect "$bin:$TAG" >/dev/null 2>&1 || fail "E2E_SKIP_BUILD=1 but image $bin:$TAG does not exist"
  else
    step "building $bin:$TAG"
    DOCKER_BUILDKIT=1 docker build --provenance=false --sbom=false --build-arg BIN="$bin" -t "$bin:$TAG" .
  fi
  step "loading $bin:$TAG into kind (from an archive)"
  docker save "$bin:$TAG" -o "$work/$bin.tar"
  kind load image-archive "$work/$bin.tar" --name "$CLUSTER"
done

# --- operator ---------------------------------------------------------------
step "installing the operator (Helm chart)"
helm upgrade --install tally-operator charts/tally-operator --kube-context "$CTX" \
  --namespace "$OPERATOR_NS" --create-namespace \
  --set image.repository=tally-operator --set image.tag="$TAG" --set image.pullPolicy=Never \
  --wait --timeout "${TIMEOUT}s"
# Helm installs crds/ only on first install; on a reused cluster bring the
# CRD up to date with the one in this tree.
k apply --server-side --force-conflicts -f deploy/crds/countercluster.yaml
k wait --for=condition=Established crd/counterclusters.tally.dev --timeout=60s

# --- namespace, Redis, (Jaeger) --------------------------------------------
step "applying namespace and Redis"
k apply -f deploy/tryout/00-namespace.yaml
k apply -f deploy/tryout/redis.yaml
k -n "$NS" rollout status deploy/redis --timeout="${TIMEOUT}s" || fail "Redis did not become ready within ${TIMEOUT}s"
if [ "${E2E_JAEGER:-0}" = 1 ]; then
  step "applying Jaeger"
  k apply -f deploy/tryout/jaeger.yaml
  k -n "$NS" rollout status deploy/jaeger --timeout="${TIMEOUT}s"
fi

# --- CounterCluster ---------------------------------------------------------
step "applying CounterCluster demo with the images of this run ($TAG)"
overrides="\"counter\":{\"image\":\"tally-counter:$TAG\"},\"gateway\":{\"image\":\"tally-gateway:$TAG\"}"
if crd_has_spec_field imagePullPolicy; then
  overrides="$overrides,\"imagePullPolicy\":\"Never\""
else
  echo "note: the installed CRD has no spec.imagePullPolicy; relying on IfNotPresent for the $TAG tags"
fi
if [ "${E2E_JAEGER:-0}" != 1 ] || ! crd_has_spec_field telemetry; then
  overrides="$overrides,\"telemetry\":null"
fi
k patch --local -f deploy/tryout/countercluster.yaml --type merge -p "{\"spec\":{$overrides}}" -o yaml \
  >"$work/countercluster.yaml"
k apply -f "$work/countercluster.yaml"
# (observedGeneration first: on a reused cluster an older Ready may still stand.)
wait_until 120 "the operator to observe tcc/demo (status.observedGeneration)" observed_generation_is_current
k -n "$NS" wait --for=condition=Ready tcc/demo --timeout="${TIMEOUT}s" ||
  fail "tcc/demo did not become Ready within ${TIMEOUT}s"
step "CounterCluster demo is Ready"

# --- 1. increments through the gateway --------------------------------------
start_port_forward
# (/ready is on the admin port, which the Service does not expose: a read
# through the public port proves a healthy counter endpoint just as well.)
wait_until 120 "a read through the gateway (a healthy counter endpoint)" \
  curl -fsS --max-time 2 "$base/api/v1/counter/e2e:probe/likes"

rid="e2e:run-$(date +%s)-$$"
step "sending $N increments to $rid/likes ($WORKERS clients)"
workers=()
for w in $(seq "$WORKERS"); do
  (
    for _ in $(seq $((N / WORKERS))); do
      out=$(curl -sS --max-time 10 -w ' %{http_code}' -X POST "$base/api/v1/counter/increment" \
        -H 'Content-Type: application/json' \
        -d "{\"resource_id\":\"$rid\",\"counter_type\":\"likes\"}" 2>/dev/null) || out="curl-failed 000"
      echo "${out##* } $(current_value "${out% *}")"
    done
  ) >"$work/worker-$w.txt" &
  workers+=("$!")
done
wait "${workers[@]}"
cat "$work"/worker-*.txt >"$work/increments.txt"
ok=$(awk '$1 == 200' "$work/increments.txt" | wc -l)
[ "$ok" -eq "$N" ] || fail "$ok of $N increments answered 200; status codes: $(awk '{print $1}' "$work/increments.txt" | sort | uniq -c | tr -s ' \n' ' ')"
# Every caller gets the value after its own increment: exactly 1..N.
awk '{print $2}' "$work/increments.txt" | sort -n >"$work/values.txt"
seq "$N" | cmp -s - "$work/values.txt" || fail "the $N increments did not return each value 1..$N exactly once"
wait_until 30 "GET $rid/likes to read $N" count_is "$N"
step "count is $N"

# --- 2. change a live tunable, then a restart-only one -----------------------
counter_gen=$(k -n "$NS" get deploy demo-counter -o jsonpath='{.metadata.generation}')
gateway_gen=$(k -n "$NS" get deploy demo-gateway -o jsonpath='{.metadata.generation}')
pods_before=$(counter_pods | sort)
step "patching counter.batchSize to 250 (live)"
k -n "$NS" patch tcc demo --type merge -p '{"spec":{"counter":{"batchSize":250}}}'
wait_until 120 "status.observedGeneration to catch up with the patch" observed_generation_is_current
[ "$(configmap_setting demo-counter-config TALLY_BATCH_SIZE)" = 250 ] ||
  fail "the counters' ConfigMap does not carry TALLY_BATCH_SIZE=250"
# The kubelet updates a mounted ConfigMap within about a minute.
wait_until 180 "every counter pod to run the new settings file" counters_run_configmap demo-counter-config
wait_until 120 "SettingsApplied=True" settings_applied
[ "$(k -n "$NS" get deploy demo-counter -o jsonpath='{.metadata.generation}')" = "$counter_gen" ] ||
  fail "deploy/demo-counter changed for a live tunable"
[ "$(counter_pods | sort)" = "$pods_before" ] || fail "counter pods restarted for a live tunable"
step "batchSize 250 applied live: same pods, same Deployment generation"

step "patching counter.commitMaxOps to 1024 (restart-only)"
k -n "$NS" patch tcc demo --type merge -p '{"spec":{"counter":{"commitMaxOps":1024}}}'
wait_until 120 "the operator to update deploy/demo-counter after the patch" generation_above demo-counter "$counter_gen"
k -n "$NS" rollout status deploy/demo-counter --timeout="${TIMEOUT}s" ||
  fail "deploy/demo-counter did not finish rolling out within ${TIMEOUT}s"
wait_until 120 "status.observedGeneration to catch up with the patch" observed_generation_is_current
k -n "$NS" wait --for=condition=Ready tcc/demo --timeout="${TIMEOUT}s" ||
  fail "tcc/demo not Ready again within ${TIMEOUT}s after the patch"
[ "$(configmap_setting demo-counter-config TALLY_COMMIT_MAX_OPS)" = 1024 ] ||
  fail "the counters' ConfigMap does not carry TALLY_COMMIT_MAX_OPS=1024"
wait_until 180 "the new counter pods to run the new settings file" counters_run_configmap demo-counter-config
pods=$(counter_pods)
[ -n "$pods" ] || fail "no running counter pods after the roll"
step "counter pods rolled with TALLY_COMMIT_MAX_OPS=1024: $(echo "$pods" | tr '\n' ' ')"
now_gateway_gen=$(k -n "$NS" get deploy demo-gateway -o jsonpath='{.metadata.generation}')
[ "$now_gateway_gen" = "$gateway_gen" ] ||
  fail "deploy/demo-gateway changed (generation $gateway_gen -> $now_gateway_gen) though only counter tunables did"

ensure_port_forward
wait_until 120 "the count to read $N after the counters rolled" count_is "$N"
step "count survived the roll: $N"

# --- 3. delete --------------------------------------------------------------
kill "$pf_pid" 2>/dev/null || true
pf_pid=""
step "deleting CounterCluster demo"
k -n "$NS" delete tcc demo --timeout=120s
deadline=$((SECONDS + 120))
until owned_objects_gone; do
  [ "$SECONDS" -lt "$deadline" ] ||
    fail "120s after deleting tcc/demo, objects labelled app.kubernetes.io/instance=demo remain: $(owned_objects 2>/dev/null | tr '\n' ' ')"
  sleep 1
done
step "owned Deployments, Services and ConfigMaps are gone"

# --- 4. the managed Redis ---------------------------------------------------
step "applying CounterCluster trial on the operator's managed Redis"
cat >"$work/trial.yaml" <<YAML
apiVersion: tally.dev/v1alpha1
kind: CounterCluster
metadata: {name: trial, namespace: $NS}
spec:
  imagePullPolicy: Never
  store: {managed: true}
  counter: {replicas: 1, image: "tally-counter:$TAG"}
  gateway: {replicas: 1, image: "tally-gateway:$TAG"}
YAML
k apply -f "$work/trial.yaml"
k -n "$NS" wait --for=condition=Ready tcc/trial --timeout="${TIMEOUT}s" ||
  fail "tcc/trial (managed Redis) did not become Ready within ${TIMEOUT}s"
k -n "$NS" get secret trial-redis-auth >/dev/null || fail "no generated password Secret trial-redis-auth"
k -n "$NS" get networkpolicy trial-redis >/dev/null || fail "no NetworkPolicy in front of the managed Redis"
GATEWAY_SERVICE=trial-gateway start_port_forward
rid="e2e:managed:$TAG"
for _ in $(seq 20); do
  curl -fsS --max-time 5 -X POST "$base/api/v1/counter/increment" -H 'Content-Type: application/json' \
    -d "{\"resource_id\":\"$rid\",\"counter_type\":\"likes\"}" >/dev/null || fail "an increment on the managed Redis failed"
done
wait_until 60 "the count on the managed Redis to read 20" count_is 20
step "the managed Redis (password, NetworkPolicy) counts: 20"
k -n "$NS" delete tcc trial --timeout=120s

echo "e2e-kind: passed ($((SECONDS - started))s)"

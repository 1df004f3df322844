# tally — one entry point for building, running, testing and benchmarking.
# `make run` and `make test` are all a fresh machine needs (see README).

CARGO ?= cargo

.PHONY: build release release-pgo run test lint fmt crd openapi e2e-kind bench bench-counter bench-gateway bench-scale bench-tracing bench-markers bench-compare bench-ab bench-replica-wait chaos

build:
	$(CARGO) build --workspace --all-targets

release:
	$(CARGO) build --release -p tally-counter -p tally-gateway -p tally-bench

## The build that ships (the images use it): the release build optimised
## with the profile of its own hot paths (PGO), into target/pgo/release/.
## Two full builds and a short training run on loopback (redis-server, wrk,
## rustup's llvm-tools); docs/benchmarks.md#profile-guided-build.
release-pgo:
	scripts/release-pgo.sh

## Starts the local stack: a redis-server if one is installed (else the
## in-memory store), the counter on :9001 and the gateway on :8080.
## Ctrl-C stops everything.
run:
	scripts/run.sh

## All tests. Installs what they need first when it is missing (redis,
## openssl, curl, h2load, helm, kubectl, kubernetes-validate, Python's grpcio and
## openapi-spec-validator:
## scripts/install-test-deps.sh, shared with .ci/run); with them installed,
## a test that finds one missing fails instead of skipping.
test:
	scripts/install-test-deps.sh
	TALLY_REQUIRE_TOOLS=1 $(CARGO) test --workspace --all-targets

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Regenerates docs/openapi.json from the gateway's types (a test fails
## while the committed copy differs from what the gateway serves).
openapi:
	TALLY_UPDATE_OPENAPI=1 cargo test -q -p tally-gateway --lib openapi

## Regenerates the CounterCluster CRD from the Rust types (a test fails on drift).
## Through a temporary file: a failed build must not truncate the committed CRD.
crd:
	$(CARGO) run -q -p tally-operator --bin crdgen > deploy/crds/countercluster.yaml.new
	mv deploy/crds/countercluster.yaml.new deploy/crds/countercluster.yaml
	cp deploy/crds/countercluster.yaml charts/tally-operator/crds/countercluster.yaml

## The real-cluster end-to-end test: kind cluster, images, Helm chart, a
## CounterCluster, increments, a tunable change, deletion. Says so and exits 0
## where docker/kind/kubectl/helm are missing (as on the development machines).
e2e-kind:
	scripts/e2e-kind.sh

## Benchmarks (docs/benchmarks.md); reports go to bench-results/.
bench: bench-compare bench-gateway bench-counter bench-scale bench-tracing

bench-gateway:
	scripts/bench-gateway.sh

bench-counter:
	scripts/bench-counter.sh

bench-scale:
	scripts/bench-scale.sh

## The chain next to a one-process reference (tally-reference), default
## settings, same run: req/s, p50/p99 and server CPU per request.
bench-compare:
	scripts/bench-compare.sh

## Two builds of the chain taking turns with the reference on one Redis:
## make bench-ab A=<dir> B=<dir> (each holding release tally-counter and tally-gateway).
bench-ab:
	scripts/bench-ab.sh $(A) $(B)

## Redis memory of the write-behind batch markers under steady async load.
bench-markers:
	scripts/bench-markers.sh

## What waiting for a Redis replica on every write costs (TALLY_STORE_WAIT_REPLICAS).
bench-replica-wait:
	scripts/bench-replica-wait.sh

## Request latency with trace export off, on with the collector refusing or
## hanging, and at the default sampling ratio.
bench-tracing:
	scripts/bench-tracing.sh

## Soak with random faults (counter kill -9 / SIGSTOP, Redis restart / SIGSTOP)
## under HTTP load, then correctness checks; exits non-zero on any failure.
## CHAOS_SECONDS (default 300, at most 600) and CHAOS_SEED choose the run;
## the report goes to bench-results/.
chaos:
	scripts/chaos.sh

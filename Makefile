# tally — one entry point for building, running, testing and benchmarking.
# `make run` and `make test` are all a fresh machine needs (see README).

CARGO ?= cargo

.PHONY: build release run test lint fmt bench bench-counter clean-bench

build:
	$(CARGO) build --workspace --all-targets

release:
	$(CARGO) build --release -p tally-counter -p tally-bench

## Starts the local stack: a redis-server if one is installed (else the
## in-memory store), and the counter. Ctrl-C stops everything.
run:
	scripts/run.sh

## All tests. Needs redis-server + redis-cli (`.ci/run` installs them).
test:
	$(CARGO) test --workspace --all-targets

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Benchmarks (BRIEF §10); reports go to bench-results/.
bench: bench-counter

bench-counter:
	scripts/bench-counter.sh

# One multi-stage Dockerfile for the three binaries:
#   docker build --build-arg BIN=tally-counter  -t tally-counter .
#   docker build --build-arg BIN=tally-gateway  -t tally-gateway .
#   docker build --build-arg BIN=tally-operator -t tally-operator .
# Built with the pinned toolchain; the counter and the gateway are the
# profile-guided build (scripts/release-pgo.sh: trained on loopback under
# the benchmark's loads, which is why the build stage has redis-server,
# wrk, h2load and openssl), the operator a plain release build. The runtime image is distroless
# and runs as a non-root user with nothing but the binary (no shell, no
# package manager).
# (Not built on the development machines: they have no Docker engine.)

FROM rust:1.95-bookworm AS build
ARG BIN
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server redis-tools wrk nghttp2-client openssl python3 \
 && rm -rf /var/lib/apt/lists/* \
 && rustup component add llvm-tools
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    if [ "${BIN}" = tally-operator ]; then \
      cargo build --release --locked -p tally-operator --bin tally-operator \
      && cp target/release/tally-operator /app; \
    else \
      scripts/release-pgo.sh && cp "target/pgo/release/${BIN}" /app; \
    fi

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /app /app
# Numeric (distroless `nonroot` = 65532), so Kubernetes can verify runAsNonRoot.
USER 65532:65532
ENTRYPOINT ["/app"]

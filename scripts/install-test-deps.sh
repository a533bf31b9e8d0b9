#!/usr/bin/env bash
# Everything the test suite needs on a fresh Debian machine: Prometheus, promtool,
# Alertmanager and amtool, Chromium (browser test), docker-compose (compose file check),
# openssl (test certificates for the TLS client settings), the
# Python environment (.venv) and the npm tools that turn Grafana's dashboard types into a
# JSON schema. Idempotent: installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for pair in prometheus:prometheus promtool:prometheus prometheus-alertmanager:prometheus-alertmanager \
            amtool:prometheus-alertmanager chromium:chromium docker-compose:docker-compose \
            openssl:openssl; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -q
  # shellcheck disable=SC2046
  $sudo apt-get install -y -q --no-install-recommends $(printf '%s\n' "${missing[@]}" | sort -u)
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -e ".[dev]"

if [ ! -x tools/grafana-schema/node_modules/.bin/ts-json-schema-generator ]; then
  npm ci --prefix tools/grafana-schema --no-audit --no-fund --loglevel=error
fi

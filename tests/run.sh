#!/usr/bin/env bash
# The project's test command: installs what the tests need, then runs every test.
# Tests start their own Prosody and ejabberd on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/install-deps.sh
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast "$@"
else
  cargo test --no-fail-fast "$@"
fi

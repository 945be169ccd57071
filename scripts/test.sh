#!/usr/bin/env bash
# The test command: installs the test dependencies, then runs every test of
# the workspace (unit, property, crash, end-to-end with real clients).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
export BALLAST_TEST_VENV=${BALLAST_TEST_VENV:-/opt/ballast-test/venv}
cargo test --workspace --all-targets --locked

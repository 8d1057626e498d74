#!/usr/bin/env bash
# Set everything up, then run the linters, the import-layer contract and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== ruff"
.venv/bin/ruff check src tests bench
echo "== import layers"
.venv/bin/lint-imports
echo "== pytest"
exec .venv/bin/pytest "$@"

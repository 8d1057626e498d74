#!/usr/bin/env bash
# Set everything up, then start the service on the embedded defaults (extra args go to `loraflow serve`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/loraflow serve "$@"

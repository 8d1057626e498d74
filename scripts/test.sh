#!/usr/bin/env bash
# Set everything up, then run the linters, the import-layer contract, mypy and the whole test
# suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== ruff"
.venv/bin/ruff check src tests bench
echo "== import layers"
.venv/bin/lint-imports
echo "== mypy"
# Held to mypy-baseline.txt: no new errors, strict modules none at all (see the script).
.venv/bin/python scripts/mypy_check.py
# Database-layer tests also run against a real PostgreSQL on 127.0.0.1 when one can be started.
if PG_URL=$(bash scripts/postgres.sh); then
  export LORAFLOW_TEST_POSTGRES_URL="$PG_URL"
else
  echo "PostgreSQL could not be started: its tests will be skipped"
fi
# ... and against a throwaway MariaDB (MySQL's dialect), which stops when this run ends.
if MYSQL_URL=$(bash scripts/mariadb.sh); then
  export LORAFLOW_TEST_MYSQL_URL="$MYSQL_URL"
else
  echo "MariaDB could not be started: its tests will be skipped"
fi
echo "== pytest"
exec .venv/bin/pytest "$@"

#!/usr/bin/env bash
# Start a PostgreSQL server on 127.0.0.1 for the test suite and print its SQLAlchemy URL.
# Installs Debian's postgresql when missing (needs root and apt). Exits non-zero if impossible.
set -euo pipefail
log() { echo "postgres: $*" >&2; }

if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing Debian's postgresql"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    log "not installed, and installing needs root and apt-get"; exit 1
  fi
fi
if [ "$(id -u)" != 0 ]; then log "starting the server needs root (pg_ctlcluster)"; exit 1; fi

VER=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -qx "$VER main"; then
  pg_createcluster "$VER" main >/dev/null
fi
PORT=$(pg_lsclusters -h | awk -v v="$VER" '$1==v && $2=="main" {print $3}')
if ! pg_lsclusters -h | awk -v v="$VER" '$1==v && $2=="main" {print $4}' | grep -q online; then
  # Loopback only: the test server is never reachable from elsewhere.
  pg_ctlcluster "$VER" main start -o "-c listen_addresses=127.0.0.1" >/dev/null
fi
for _ in $(seq 1 30); do
  runuser -u postgres -- pg_isready -q -h 127.0.0.1 -p "$PORT" && break
  sleep 1
done
# Administration over the local socket (peer authentication as the postgres user).
psql_admin() { runuser -u postgres -- psql -p "$PORT" -qtAX "$@"; }
if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname='loraflow'")" != 1 ]; then
  psql_admin -c "CREATE ROLE loraflow LOGIN PASSWORD 'loraflow' CREATEDB" >/dev/null
fi
if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname='loraflow_test'")" != 1 ]; then
  psql_admin -c "CREATE DATABASE loraflow_test OWNER loraflow" >/dev/null
fi
echo "postgresql+psycopg://loraflow:loraflow@127.0.0.1:${PORT}/loraflow_test"

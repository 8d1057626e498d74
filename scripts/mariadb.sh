#!/usr/bin/env bash
# Start a throwaway MariaDB server on 127.0.0.1 for the test suite and print its SQLAlchemy URL.
# Installs Debian's mariadb-server when missing (needs root and apt). Exits non-zero if impossible.
#
# Each call starts its own server (data dir under /tmp, a free port, a user with a password and
# one database), so test runs side by side never share tables. The server stops by itself, and
# its folder is removed, when the process that called this script exits (scripts/test.sh, which
# becomes pytest; or your shell after `export LORAFLOW_TEST_MYSQL_URL=$(bash scripts/mariadb.sh)`).
# LORAFLOW_MARIADB_WATCH_PID names another process to outlive.
set -euo pipefail
log() { echo "mariadb: $*" >&2; }

if ! command -v mariadbd >/dev/null 2>&1 && [ ! -x /usr/sbin/mariadbd ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing Debian's mariadb-server"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      mariadb-server >/dev/null 2>&1
  else
    log "not installed, and installing needs root and apt-get"; exit 1
  fi
fi
PATH="$PATH:/usr/sbin"
WATCH="${LORAFLOW_MARIADB_WATCH_PID:-$PPID}"

DIR=$(mktemp -d /tmp/loraflow-mariadb.XXXXXX)
RUN_AS=()
if [ "$(id -u)" = 0 ]; then
  # mariadbd refuses to run as root without --user; the package's mysql user owns the files.
  chown mysql: "$DIR"
  RUN_AS=(--user=mysql)
fi
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
PASSWORD=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')

# --no-defaults: the system's /etc/mysql settings (its socket, port, data dir) stay out of it.
if ! mariadb-install-db --no-defaults "${RUN_AS[@]}" --datadir="$DIR/data" --skip-test-db \
  --auth-root-authentication-method=socket >"$DIR/install.log" 2>&1; then
  log "mariadb-install-db failed: $(tail -3 "$DIR/install.log")"; rm -rf "$DIR"; exit 1
fi
# Run once at start-up with full rights: the account and database the tests use. The server
# keeps MariaDB's built-in defaults (latin1 in 10.11), as a stock install may: loraflow's
# tables must declare utf8mb4 themselves.
cat >"$DIR/init.sql" <<SQL
CREATE DATABASE IF NOT EXISTS loraflow_test;
CREATE USER IF NOT EXISTS 'loraflow'@'127.0.0.1' IDENTIFIED BY '$PASSWORD';
GRANT ALL PRIVILEGES ON loraflow_test.* TO 'loraflow'@'127.0.0.1';
SQL
[ "$(id -u)" = 0 ] && chown -R mysql: "$DIR"

# Loopback only: the test server is never reachable from elsewhere. Its own session, so a
# Ctrl-C in the caller's terminal reaches the watcher below, which stops it cleanly.
setsid mariadbd --no-defaults "${RUN_AS[@]}" --datadir="$DIR/data" --socket="$DIR/mysqld.sock" \
  --port="$PORT" --bind-address=127.0.0.1 --pid-file="$DIR/mysqld.pid" \
  --log-error="$DIR/error.log" --init-file="$DIR/init.sql" \
  --innodb-buffer-pool-size=64M --innodb-flush-log-at-trx-commit=2 --skip-log-bin \
  </dev/null >/dev/null 2>&1 &
SERVER=$!

ready=0
for _ in $(seq 1 60); do
  if ! kill -0 "$SERVER" 2>/dev/null; then break; fi
  if mariadb --no-defaults --protocol=tcp -h 127.0.0.1 -P "$PORT" -u loraflow \
    -p"$PASSWORD" loraflow_test -e 'SELECT 1' >/dev/null 2>&1; then
    ready=1; break
  fi
  sleep 0.5
done
if [ "$ready" != 1 ]; then
  log "the server did not start: $(tail -3 "$DIR/error.log" 2>/dev/null)"
  kill "$SERVER" 2>/dev/null || true
  wait "$SERVER" 2>/dev/null || true
  rm -rf "$DIR"
  exit 1
fi

# The watcher: once the caller is gone, stop the server (SIGTERM is a clean shutdown) and
# remove its folder. Detached from stdout, so `$(bash scripts/mariadb.sh)` returns at once.
(
  trap '' INT HUP
  while kill -0 "$WATCH" 2>/dev/null; do sleep 2; done
  kill "$SERVER" 2>/dev/null || true
  for _ in $(seq 1 60); do kill -0 "$SERVER" 2>/dev/null || break; sleep 0.5; done
  kill -9 "$SERVER" 2>/dev/null || true
  rm -rf "$DIR"
) </dev/null >/dev/null 2>&1 &
disown

log "MariaDB $(mariadbd --version | awk '{print $3}') on 127.0.0.1:$PORT (data in $DIR)"
echo "mysql+pymysql://loraflow:${PASSWORD}@127.0.0.1:${PORT}/loraflow_test?charset=utf8mb4"

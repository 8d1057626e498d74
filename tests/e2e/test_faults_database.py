"""Faults: the database locked by another process, and a PostgreSQL server that goes away.

A write waits up to DB_BUSY_TIMEOUT for another process's SQLite lock: released in time,
the request succeeds; held longer, it gets a 503 that says why, and succeeds on retry once
the lock is gone. A stopped PostgreSQL shows in /health and turns requests into 503s; they
work again when it is back.
"""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import POSTGRES_URL
from tests.e2e.conftest import start_server
from tests.e2e.server import Server, free_port

pytestmark = pytest.mark.integration

BUSY_TIMEOUT = 2  # DB_BUSY_TIMEOUT of the servers here, in seconds
LIGHT = {"LOAD_LOCAL_MODEL": "false", "AUTO_INGEST_SAMPLE": "false", "ENABLE_UI": "false"}


def db_server(
    data: Path, model_cache: Path, **env: str
) -> contextlib.AbstractContextManager[Server]:
    """`loraflow serve` with a short busy timeout and no local model, stopped on leaving."""
    env = {"CACHE_DIR": str(model_cache), "DB_BUSY_TIMEOUT": str(BUSY_TIMEOUT), **LIGHT, **env}
    return start_server(data, env, ("serve",))


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[Server]:
    with db_server(tmp_path_factory.mktemp("db-locked"), model_cache) as srv:
        yield srv


@contextlib.contextmanager
def exclusive_lock(db_file: Path) -> Iterator[sqlite3.Connection]:
    """Another process's connection holding the write lock (as a backup or a shell would).

    It waits its turn to take the lock: the server's own background writes (alert state,
    usage) may hold it for a moment, and taking it must not race them.
    """
    conn = sqlite3.connect(db_file, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield conn
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()


def create(client: httpx.Client, name: str) -> httpx.Response:
    return client.post("/api/collections", json={"name": name})


def names(client: httpx.Client) -> set[str]:
    return {c["name"] for c in client.get("/api/collections").json()["collections"]}


def test_a_lock_released_within_the_timeout_only_delays_the_write(sqlite_server: Server) -> None:
    with httpx.Client(base_url=sqlite_server.url, timeout=60) as client:
        released = threading.Event()
        with exclusive_lock(sqlite_server.data_dir / "loraflow.db") as conn:

            def release() -> None:
                time.sleep(BUSY_TIMEOUT / 4)
                conn.execute("COMMIT")
                released.set()

            threading.Thread(target=release, daemon=True).start()
            r = create(client, "waited")
            # It answered only after the lock went away: it waited, it did not fail.
            assert released.is_set()
        assert r.status_code == 201, r.text
        assert "waited" in names(client)


def test_a_lock_held_too_long_is_a_clear_503_and_a_retry_succeeds(sqlite_server: Server) -> None:
    with httpx.Client(base_url=sqlite_server.url, timeout=60) as client:
        with exclusive_lock(sqlite_server.data_dir / "loraflow.db"):
            r = create(client, "blocked")
            assert r.status_code == 503, r.text
            body = r.json()
            assert "database is busy" in body["detail"]
            assert f"DB_BUSY_TIMEOUT={BUSY_TIMEOUT}s" in body["detail"]
            assert "retry" in body["hint"] and r.headers["retry-after"]
            assert "Traceback" not in r.text
            # Reads go on under the lock (WAL): the service is not down, only busy.
            health = client.get("/health").json()
            assert health["details"]["database"].startswith("reachable")
        assert "blocked" not in names(client)
        assert create(client, "blocked").status_code == 201
        assert "blocked" in names(client)


class Proxy:
    """A TCP forwarder to the real PostgreSQL; stopping it is the server going away."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None

    def start(self) -> None:
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self._listener.listen(32)
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def stop(self) -> None:
        if self._listener is not None:
            # close() alone does not wake a thread blocked in accept() on Linux; it would
            # go on accepting. shutdown() does.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


@pytest.fixture()
def postgres_db() -> Iterator[sa.engine.URL]:
    """A database of its own on the test PostgreSQL server, dropped afterwards."""
    if not POSTGRES_URL:
        pytest.skip("PostgreSQL is not running (scripts/postgres.sh starts it as root)")
    url = sa.make_url(POSTGRES_URL)
    name = f"loraflow_faults_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    try:
        yield url.set(database=name)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def test_postgres_going_away_is_reported_and_requests_get_503(
    tmp_path: Path, model_cache: Path, postgres_db: sa.engine.URL
) -> None:
    proxy = Proxy((postgres_db.host or "127.0.0.1", postgres_db.port or 5432))
    proxy.start()
    via_proxy = postgres_db.set(host="127.0.0.1", port=proxy.port)
    url = via_proxy.render_as_string(hide_password=False)
    with db_server(tmp_path / "data", model_cache, DATABASE_URL=url) as srv:
        try:
            with httpx.Client(base_url=srv.url, timeout=60) as client:
                assert create(client, "before").status_code == 201
                health = client.get("/health")
                assert health.json()["details"]["database"] == "reachable (postgresql)"

                proxy.stop()
                health = client.get("/health")
                assert health.status_code == 503 and health.json()["status"] == "unhealthy"
                assert health.json()["details"]["database"].startswith("unavailable")
                r = create(client, "during")
                assert r.status_code == 503, r.text
                assert (
                    "is unavailable" in r.json()["detail"]
                    and "server is running" in r.json()["hint"]
                )
                # The URL is named with its password hidden.
                assert f"127.0.0.1:{proxy.port}" in r.json()["detail"]
                assert f":{postgres_db.password}@" not in r.text and "***" in r.text
                assert "Traceback" not in r.text
                assert client.get("/api/collections").status_code == 503

                proxy.start()  # the server is back: the next requests reconnect
                assert create(client, "after").status_code == 201
                assert {"before", "after"} <= names(client)
                assert client.get("/health").json()["details"]["database"].startswith("reachable")
        finally:
            proxy.stop()

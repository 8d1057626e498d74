"""Database: tables created on first use, shared state round-trips, clear errors.

Runs on SQLite and on the real PostgreSQL server when the test setup started one.
"""

from __future__ import annotations

import pytest

from loraflow import db
from loraflow.errors import ConfigError


def test_state_round_trip_and_visible_to_a_second_engine(db_url: str) -> None:
    a = db.make_engine(db_url)
    b = db.make_engine(db_url)  # another worker of the same instance
    assert db.get_state(a, "model_selection", "dflt") == "dflt"
    db.set_state(a, "model_selection", {"engine": "ollama", "adapter": None})
    assert db.get_state(b, "model_selection") == {"engine": "ollama", "adapter": None}
    db.set_state(b, "model_selection", {"engine": "local", "adapter": "x"})
    assert db.get_state(a, "model_selection")["adapter"] == "x"
    a.dispose()
    b.dispose()


def test_schema_version_is_recorded_once(db_url: str) -> None:
    for _ in range(2):
        engine = db.make_engine(db_url)
        with engine.connect() as conn:
            rows = conn.execute(db.schema_info.select()).all()
        engine.dispose()
    assert [r.version for r in rows] == [db.SCHEMA_VERSION]


def test_unusable_url_is_a_config_error_without_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        db.make_engine("nosuchdialect://user:secret@host/db")
    assert "secret" not in str(info.value)
    assert "DATABASE_URL" in str(info.value)


def test_unreachable_server_is_a_clear_error() -> None:
    with pytest.raises(ConfigError) as info:
        db.make_engine("postgresql+psycopg://u:pw@127.0.0.1:9/none?connect_timeout=2")
    assert "cannot open the database" in str(info.value) and "pw" not in str(info.value)


def test_redact_url_hides_the_password() -> None:
    assert db.redact_url("postgresql://u:pw@h:5432/d") == "postgresql://u:***@h:5432/d"
    assert db.redact_url("sqlite:///x.db") == "sqlite:///x.db"


def _open(url: str, barrier) -> None:
    barrier.wait()  # all processes create the schema at the same moment
    db.make_engine(url).dispose()


def test_workers_starting_together_create_the_schema_once(db_url: str) -> None:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_open, args=(db_url, barrier)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    engine = db.make_engine(db_url)
    with engine.connect() as conn:
        assert len(conn.execute(db.schema_info.select()).all()) == 1
    engine.dispose()

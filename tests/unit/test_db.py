"""Database: tables created on first use, shared state round-trips, clear errors.

Runs on SQLite and on the real PostgreSQL and MariaDB servers when the test setup started them.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.schema import ColumnCollectionConstraint

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


def _adapter_row(name: str, path: str, **values: object) -> dict[str, object]:
    now = datetime(2026, 12, 6, 10, 30, 15, 123456, tzinfo=UTC)
    row: dict[str, object] = {
        "id": name, "name": name, "version": 1, "type": "lora", "base_model": "b",
        "path": path, "description": "", "metrics": {}, "file_size_mb": 1.0,
        "checksum_sha256": "0" * 64, "tags": [], "rank": 8, "alpha": 16.0,
        "target_modules": ["q_proj"], "source": "test", "created_at": now, "updated_at": now,
    }  # fmt: skip
    return row | values


def test_values_round_trip_exactly(db_url: str) -> None:
    """Long non-Latin text, doubles, microseconds, and keys that differ only by case or accent."""
    engine = db.make_engine(db_url)
    story = "龙在山上。" * 15_000  # 225 KB in UTF-8: past MySQL's 64 KB TEXT
    first = _adapter_row(
        "名前-ü", "adapters/Story", description=story, file_size_mb=1 / 3, alpha=0.1
    )
    with engine.begin() as conn:
        conn.execute(db.adapters.insert().values(first))
        conn.execute(db.adapters.insert().values(_adapter_row("名前-u", "adapters/story")))
    with engine.connect() as conn:
        got = conn.execute(db.adapters.select().where(db.adapters.c.path == "adapters/Story")).all()
        names = conn.execute(sa.select(db.adapters.c.name).order_by(db.adapters.c.name)).scalars()
        assert sorted(names) == ["名前-u", "名前-ü"]
    assert len(got) == 1
    row = got[0]
    assert row.name == "名前-ü" and row.description == story
    assert row.file_size_mb == 1 / 3 and row.alpha == 0.1
    assert row.created_at.replace(tzinfo=None) == datetime(2026, 12, 6, 10, 30, 15, 123456)
    db.set_state(engine, "Deploy:a", 1)
    db.set_state(engine, "deploy:a", 2)
    assert db.states_with_prefix(engine, "deploy:") == {"deploy:a": 2}
    engine.dispose()


def test_every_key_fits_innodb_on_mysql() -> None:
    """InnoDB refuses a key over 3,072 bytes, and utf8mb4 takes 4 bytes a character."""
    dialect = mysql.dialect()
    for table in db.metadata.sorted_tables:
        constraints = [c for c in table.constraints if isinstance(c, ColumnCollectionConstraint)]
        keys = [c.columns for c in constraints]
        keys += [i.columns for i in table.indexes]
        for columns in keys:
            size = 0
            for col in columns:
                impl = col.type.dialect_impl(dialect)
                size += 4 * impl.length if isinstance(impl, sa.String) else 8
            assert size <= 3072, f"{table.name}({', '.join(c.name for c in columns)}): {size} bytes"


def test_mysql_lock_waits_read_as_busy(db_url: str) -> None:
    """A row lock held past innodb_lock_wait_timeout is the database being busy, not down."""
    if not db_url.startswith("mysql"):
        pytest.skip("MySQL's lock wait")
    engine = db.make_engine(db_url)
    db.set_state(engine, "k", 1)
    update = db.service_state.update().where(db.service_state.c.key == "k")
    with engine.connect() as holder, engine.connect() as waiter:
        holder.begin()
        holder.execute(update.values(value=2))
        waiter.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = 1")
        with pytest.raises(sa.exc.OperationalError) as info:
            waiter.execute(update.values(value=3))
        holder.rollback()
    reason = db.unavailable_reason(info.value, db_url, 30.0)
    assert reason is not None and "busy" in reason[0]
    engine.dispose()


@pytest.mark.parametrize(
    "message",
    [
        "(1021, 'Disk full (/var/tmp/#sql_1.MAI); waiting for someone to free some space...')",
        "(1114, \"The table 'adapters' is full\")",
        "could not extend file: No space left on device",
        "database or disk is full",
    ],
)
def test_disk_full_wording_of_each_database(message: str) -> None:
    assert db.disk_full(Exception(message))
    assert not db.disk_full(Exception("Duplicate entry 'x' for key 'path'"))

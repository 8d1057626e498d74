"""Database engine, tables and small typed helpers; SQLite by default, any SQLAlchemy URL works."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    select,
)
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from loraflow.errors import ConfigError

SCHEMA_VERSION = 1

metadata = MetaData()

# Key/value state shared by every worker of one instance (e.g. which model answers /ask).
service_state = Table(
    "service_state",
    metadata,
    Column("key", String(128), primary_key=True),
    Column("value", JSON, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

schema_info = Table(
    "schema_info",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("version", Integer, nullable=False),
)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def make_engine(url: str) -> Engine:
    """Create the engine, make the SQLite folder, and create missing tables."""
    kwargs: dict[str, Any] = {"future": True, "pool_pre_ping": True}
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Several threads (request handlers, workers) share the engine.
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    try:
        engine = create_engine(url, **kwargs)
    except (SQLAlchemyError, ImportError) as exc:
        raise ConfigError(
            f"DATABASE_URL={_redact(url)!r} cannot be used: {exc}",
            hint="use sqlite:///path, postgresql+psycopg://..., or mysql+pymysql://...",
        ) from exc
    if url.startswith("sqlite"):

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            # WAL lets readers proceed while one writer commits (several workers, one file).
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

    try:
        metadata.create_all(engine)
        with engine.begin() as conn:
            row = conn.execute(select(schema_info.c.version)).first()
            if row is None:
                conn.execute(schema_info.insert().values(id=1, version=SCHEMA_VERSION))
    except OperationalError as exc:
        raise ConfigError(
            f"cannot open the database at {_redact(url)}: {exc.orig}",
            hint="check DATABASE_URL and that the server is running",
        ) from exc
    return engine


def _redact(url: str) -> str:
    """Hide a password in a URL before it reaches a log or a message."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


def redact_url(url: str) -> str:
    """Public form of a database URL (password hidden)."""
    return _redact(url)


def get_state(engine: Engine, key: str, default: Any = None) -> Any:
    """Read one shared state value."""
    with engine.connect() as conn:
        row = conn.execute(select(service_state.c.value).where(service_state.c.key == key)).first()
    if row is None:
        return default
    value = row[0]
    return json.loads(value) if isinstance(value, str) else value


def set_state(engine: Engine, key: str, value: Any) -> None:
    """Write one shared state value (insert or update)."""
    now = _utcnow()
    with engine.begin() as conn:
        updated = conn.execute(
            service_state.update()
            .where(service_state.c.key == key)
            .values(value=value, updated_at=now)
        ).rowcount
        if not updated:
            conn.execute(service_state.insert().values(key=key, value=value, updated_at=now))

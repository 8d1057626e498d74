"""Database engine, tables and small typed helpers; SQLite by default, any SQLAlchemy URL works."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    select,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.exc import (
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)

from loraflow import migrations
from loraflow.errors import ConfigError, Conflict

# What `schema_info` says, kept for readers of old backups: frozen at the baseline. The
# schema's version is its Alembic revision (`alembic_version`, loraflow.migrations).
SCHEMA_VERSION = 1

metadata = MetaData()

# MySQL and MariaDB (one SQLAlchemy dialect, "mysql") differ from SQLite and PostgreSQL where
# it matters to loraflow; these variants change their DDL only, so SQLite and PostgreSQL
# databases keep the tables earlier versions created.
_MYSQL = ("mysql", "mariadb")
# Every table declares utf8mb4 (a database created with the server's default may be latin1,
# which cannot store most non-Latin text) and binary collation: names, paths and state keys
# compare case- and accent-sensitively, as they do on SQLite and PostgreSQL.
_MYSQL_TABLE = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
# InnoDB keys hold at most 3,072 bytes: 768 utf8mb4 characters.
MYSQL_MAX_KEY_CHARS = 768


def _table(name: str, *items: Any) -> Table:
    return Table(name, metadata, *items, **_MYSQL_TABLE)


def _float() -> Any:
    """A double everywhere (MySQL's FLOAT is single precision: 0.1 reads back 0.10000000149)."""
    return Float().with_variant(mysql.DOUBLE(asdecimal=False), *_MYSQL)


def _text() -> Any:
    """Unbounded text (MySQL's TEXT stops at 64 KB; LONGTEXT at 4 GB)."""
    return Text().with_variant(mysql.LONGTEXT(), *_MYSQL)


def _datetime() -> Any:
    """A timestamp to the microsecond (MySQL's DATETIME drops fractions of a second)."""
    return DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), *_MYSQL)


def _key_string(length: int) -> Any:
    """A VARCHAR that is a key by itself: capped on MySQL to fit InnoDB's key length."""
    return String(length).with_variant(mysql.VARCHAR(min(length, MYSQL_MAX_KEY_CHARS)), *_MYSQL)


# Key/value state shared by every worker of one instance (e.g. which model answers /ask).
service_state = _table(
    "service_state",
    Column("key", String(128), primary_key=True),
    Column("value", JSON, nullable=False),
    Column("updated_at", _datetime(), nullable=False),
)

schema_info = _table(
    "schema_info",
    Column("id", Integer, primary_key=True),
    Column("version", Integer, nullable=False),
)


# Named knowledge bases; the index folder is keyed by `id`, so a rename never moves files.
kb_collections = _table(
    "kb_collections",
    Column("id", String(32), primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("embedding_model", String(512), nullable=False),
    Column("chunk_size", Integer, nullable=False),
    Column("chunk_overlap", Integer, nullable=False),
    Column("index_dir", String(1024), nullable=False),
    # A re-embed in progress (target model, folder, progress); null when none.
    Column("reembed", JSON, nullable=True),
    Column("created_at", _datetime(), nullable=False),
)

# Assistants: a named binding of system prompt, model or adapter and knowledge bases.
assistants = _table(
    "assistants",
    Column("name", String(64), primary_key=True),
    Column("description", _text(), nullable=False, default=""),
    Column("system_prompt", _text(), nullable=False, default=""),
    Column("engine", String(16), nullable=False),
    Column("adapter", String(256), nullable=True),
    Column("collections", JSON, nullable=False),
    Column("generation", JSON, nullable=False),
    Column("retrieval", JSON, nullable=False),
    Column("created_at", _datetime(), nullable=False),
    Column("updated_at", _datetime(), nullable=False),
)


# Fine-tuning jobs: the seed's simple_lora_tasks columns plus live progress and control.
simple_lora_tasks = _table(
    "simple_lora_tasks",
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("task_name", String(128), nullable=False, unique=True),
    Column("base_model", String(512), nullable=False),
    Column("dataset_file", String(512), nullable=False),
    Column("dataset_type", String(32), nullable=False),
    Column("output_path", String(1024), nullable=False),
    Column("training_params", JSON, nullable=False),
    Column("status", String(32), nullable=False, index=True),
    Column("progress", _float(), nullable=False, default=0.0),
    Column("current_epoch", Integer, nullable=False, default=0),
    Column("message", _text(), nullable=True),
    Column("created_at", _datetime(), nullable=False),
    Column("started_at", _datetime(), nullable=True),
    Column("completed_at", _datetime(), nullable=True),
    Column("step", Integer, nullable=False, default=0),
    Column("total_steps", Integer, nullable=False, default=0),
    Column("loss", _float(), nullable=True),
    Column("eval_loss", _float(), nullable=True),
    Column("eta_seconds", _float(), nullable=True),
    Column("error", _text(), nullable=True),
    Column("pid", Integer, nullable=True),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("resumable", Boolean, nullable=False, default=False),
    # The lease: the service (or the cluster task) running a job renews heartbeat_at; only a
    # lease that expired marks a running job interrupted (loraflow.training.jobs).
    Column("owner", String(255), nullable=True),
    Column("heartbeat_at", _datetime(), nullable=True),
    # Where it runs: local or ray, the node (host or Ray node), the resources asked for, and
    # the Ray actor's id.
    Column("executor", String(16), nullable=True),
    Column("node", String(255), nullable=True),
    Column("resources", JSON, nullable=True),
    Column("ray_id", String(128), nullable=True),
)


# Adapter registry: one row per adapter folder (a new version of a name is a new folder).
adapters = _table(
    "adapters",
    Column("id", String(32), primary_key=True),
    Column("name", String(128), nullable=False, index=True),
    Column("version", Integer, nullable=False),
    Column("type", String(16), nullable=False),
    Column("base_model", String(512), nullable=False, default=""),
    Column("path", _key_string(1024), nullable=False, unique=True),
    Column("description", _text(), nullable=False, default=""),
    Column("dataset", String(512), nullable=True),
    Column("metrics", JSON, nullable=False),
    Column("file_size_mb", _float(), nullable=False),
    Column("checksum_sha256", String(64), nullable=False),
    Column("tags", JSON, nullable=False),
    Column("rank", Integer, nullable=False),
    Column("alpha", _float(), nullable=False),
    Column("target_modules", JSON, nullable=False),
    Column("source", String(16), nullable=False),
    # ok | changed (files differ from the checksum) | missing (folder gone)
    Column("status", String(16), nullable=False, default="ok"),
    Column("created_at", _datetime(), nullable=False),
    Column("updated_at", _datetime(), nullable=False),
    UniqueConstraint("name", "version", name="uq_adapters_name_version"),
)

# Validation reports (the whole report as JSON, score and grade as columns to filter on).
adapter_validations = _table(
    "adapter_validations",
    Column("id", String(32), primary_key=True),
    Column("adapter_id", String(32), nullable=True, index=True),
    Column("checksum_sha256", String(64), nullable=True),
    Column("mode", String(16), nullable=False),
    Column("score", _float(), nullable=False),
    Column("grade", String(16), nullable=False),
    Column("report", JSON, nullable=False),
    Column("created_at", _datetime(), nullable=False),
)

# What each deployment target (a model name clients call) routes to, and its history.
deployments = _table(
    "deployments",
    Column("target", String(64), primary_key=True),
    Column("strategy", String(16), nullable=False),
    # {"variants": [{"name", "adapter", "weight"}], ...strategy fields}
    Column("state", JSON, nullable=False),
    Column("previous", JSON, nullable=True),
    Column("version", Integer, nullable=False, default=1),
    Column("updated_at", _datetime(), nullable=False),
)

deployment_events = _table(
    "deployment_events",
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("target", String(64), nullable=False, index=True),
    Column("action", String(32), nullable=False),
    Column("status", String(16), nullable=False),
    Column("detail", JSON, nullable=False),
    Column("created_at", _datetime(), nullable=False),
)

# Merge -> validate -> deploy workflows (and single long operations) with their steps.
adapter_workflows = _table(
    "adapter_workflows",
    Column("id", String(32), primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("spec", JSON, nullable=False),
    Column("steps", JSON, nullable=False),
    Column("result", JSON, nullable=True),
    Column("error", _text(), nullable=True),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    # host:pid of the process running it; a restart interrupts only its own dead runs.
    Column("owner", String(128), nullable=True),
    Column("created_at", _datetime(), nullable=False),
    Column("updated_at", _datetime(), nullable=False),
)


# Story memory: one project per story; each entry version is a row, `entry_id` ties a
# fact's versions together and only the row with `current` true is ever injected.
memory_projects = _table(
    "memory_projects",
    Column("id", String(32), primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("description", _text(), nullable=False, default=""),
    Column("created_at", _datetime(), nullable=False),
    Column("updated_at", _datetime(), nullable=False),
)

memory_entries = _table(
    "memory_entries",
    Column("id", String(32), primary_key=True),
    Column("entry_id", String(32), nullable=False, index=True),
    Column("project_id", String(32), nullable=False, index=True),
    Column("version", Integer, nullable=False),
    Column("current", Boolean, nullable=False, index=True),
    Column("kind", String(16), nullable=False),
    Column("title", String(256), nullable=False),
    Column("content", _text(), nullable=False),
    Column("keywords", JSON, nullable=False),
    Column("importance", Integer, nullable=False),
    Column("always_on", Boolean, nullable=False),
    Column("chapter", Integer, nullable=True),
    Column("position", Integer, nullable=True),
    Column("note", _text(), nullable=True),
    Column("created_at", _datetime(), nullable=False),
    Column("updated_at", _datetime(), nullable=False),
)

memory_suggestions = _table(
    "memory_suggestions",
    Column("id", String(32), primary_key=True),
    Column("project_id", String(32), nullable=False, index=True),
    Column("kind", String(16), nullable=False),
    Column("title", String(256), nullable=False),
    Column("content", _text(), nullable=False),
    Column("keywords", JSON, nullable=False),
    Column("evidence", _text(), nullable=False),
    Column("language", String(8), nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("entry_id", String(32), nullable=True),
    Column("created_at", _datetime(), nullable=False),
)

# The story text of a project, one row per written passage, so "continue" and every
# browser see the same history.
story_passages = _table(
    "story_passages",
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("project_id", String(32), nullable=False, index=True),
    Column("prompt", _text(), nullable=False),
    Column("text", _text(), nullable=False),
    Column("meta", JSON, nullable=False),
    Column("created_at", _datetime(), nullable=False),
)


# The highest version each adapter name was ever given, kept when rows are forgotten, so
# a number is never reused for different files. Names registered before this table existed
# fall back to their highest remaining row.
adapter_versions = _table(
    "adapter_versions",
    Column("name", String(128), primary_key=True),
    Column("top", Integer, nullable=False),
)


# Finished requests to deployment targets, written in batches by every server worker, so one
# alert evaluation sees the numbers of all workers. `at` is Unix seconds.
monitor_requests = _table(
    "monitor_requests",
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("target", String(64), nullable=False),
    Column("variant", String(64), nullable=False),
    Column("ok", Boolean, nullable=False),
    Column("seconds", _float(), nullable=False),
    Column("worker", String(64), nullable=False),
    Column("at", _float(), nullable=False, index=True),
)

# CPU, resident memory and GPU use of each server worker, sampled while it serves.
monitor_resources = _table(
    "monitor_resources",
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("worker", String(64), nullable=False),
    Column("cpu_percent", _float(), nullable=False),
    Column("memory_percent", _float(), nullable=False),
    Column("rss_bytes", _float(), nullable=False),
    Column("gpu_memory_percent", _float(), nullable=True),
    Column("gpu_util_percent", _float(), nullable=True),
    Column("at", _float(), nullable=False, index=True),
)

# Alerts: pending -> firing -> resolved. `open_key` (rule|target|variant) is set while the
# alert is pending or firing and cleared when it resolves, so concurrent evaluations by
# several workers can never open the same alert twice.
alerts = _table(
    "alerts",
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("rule", String(32), nullable=False),
    Column("target", String(64), nullable=False),
    Column("variant", String(64), nullable=False),
    Column("open_key", String(191), nullable=True, unique=True),
    Column("state", String(16), nullable=False, index=True),
    Column("value", _float(), nullable=True),
    Column("threshold", _float(), nullable=False),
    Column("started_at", _datetime(), nullable=False),
    Column("fired_at", _datetime(), nullable=True),
    Column("ended_at", _datetime(), nullable=True),
    Column("updated_at", _datetime(), nullable=False),
    Column("detail", JSON, nullable=False),
)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def make_engine(url: str, busy_timeout: float = 30.0, *, migrate: bool = True) -> Engine:
    """Create the engine, make the SQLite folder, and upgrade the schema (unless `migrate` is off).

    `busy_timeout` (DB_BUSY_TIMEOUT) bounds how long a write waits for another process's
    SQLite lock, and how long a connect to a database server may take.
    """
    kwargs: dict[str, Any] = {"future": True, "pool_pre_ping": True}
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Several threads (request handlers, workers) share the engine.
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": busy_timeout}
    elif url.startswith(("postgresql", "mysql")):
        # A stopped server refuses at once; an unreachable host must not hang a request.
        kwargs["connect_args"] = {"connect_timeout": max(1, round(busy_timeout))}
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
            cur.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            cur.close()

    if migrate:
        upgrade_schema(engine, url)
    return engine


def upgrade_schema(engine: Engine, url: str) -> tuple[str | None, str]:
    """Migrate the schema to the newest revision; (revision before, after).

    Once, however many workers start together: the migration runs under the schema lock (a
    file lock beside a SQLite file, a lock on a database server). Raises ConfigError when the
    database cannot be opened, or was migrated by a newer loraflow.
    """
    try:
        return migrations.upgrade(engine, lock_file=_sqlite_file(url))
    except SQLAlchemyError as exc:
        raise _cannot_open(url, exc) from exc


def known_schema_revision(revision: str) -> bool:
    """Whether `revision` is one this loraflow knows (False: a newer one migrated the database)."""
    return migrations.known_revision(revision)


def schema_revision(engine: Engine, url: str) -> tuple[str | None, str]:
    """The database's schema revision (None before the first migration) and this code's newest."""
    try:
        with engine.connect() as conn:
            return migrations.current_revision(conn), migrations.head_revision()
    except SQLAlchemyError as exc:
        raise _cannot_open(url, exc) from exc


def _cannot_open(url: str, exc: SQLAlchemyError) -> ConfigError:
    return ConfigError(
        f"cannot open the database at {_redact(url)}: {getattr(exc, 'orig', None) or exc}",
        hint="check DATABASE_URL and that the server is running",
    )


def _sqlite_file(url: str) -> Path | None:
    if not url.startswith("sqlite"):
        return None
    path = url.split("///", 1)[-1]
    return Path(f"{path}.lock") if path and path != ":memory:" else None


def _redact(url: str) -> str:
    """Hide a password in a URL before it reaches a log or a message."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


# Words in driver messages that mean the server or file cannot be reached right now.
_OUTAGE_MARKERS = (
    "connect",
    "connection",
    "closed",
    "terminat",
    "timeout",
    "timed out",
    "refused",
    "shut down",
    "shutting down",
    "unable to open",
    "no route",
    "server",
)


def unavailable_reason(exc: Exception, url: str, busy_timeout: float) -> tuple[str, str] | None:
    """Message and hint when `exc` means the database is locked or down (a retry may work).

    None for any other error: those are bugs or bad data, not an outage.
    """
    if not isinstance(exc, DBAPIError):
        return None
    if not isinstance(exc, (OperationalError, InterfaceError)) and not exc.connection_invalidated:
        return None
    reason = (str(exc.orig or exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    lowered = reason.lower()
    # SQLite: "database is locked"; MySQL: "Lock wait timeout exceeded", "Deadlock found".
    if any(word in lowered for word in ("locked", "busy", "lock wait", "deadlock")):
        return (
            f"the database is busy: another process held its lock for more than "
            f"DB_BUSY_TIMEOUT={busy_timeout:g}s ({reason})",
            "retry in a moment; if it lasts, stop what holds the database open "
            "(a long backup or a sqlite3 shell) or raise DB_BUSY_TIMEOUT",
        )
    # SQLite reports a missing table or a syntax error as OperationalError too: those are
    # bugs, not an outage, and must not hide behind a retryable 503.
    if not (exc.connection_invalidated or isinstance(exc, InterfaceError)) and not any(
        marker in lowered for marker in _OUTAGE_MARKERS
    ):
        return None
    return (
        f"the database at {_redact(url)} is unavailable ({reason})",
        "check that the database server is running and DATABASE_URL is right; "
        "retry once it is back",
    )


def disk_full(exc: Exception) -> bool:
    """Whether a database error says its disk is full (SQLite, PostgreSQL or MySQL wording)."""
    said = str(getattr(exc, "orig", None) or exc).lower()
    # MySQL: "Disk full (...); waiting for someone to free some space" (1021) and, when InnoDB
    # cannot grow a table's file, "The table 'x' is full" (1114).
    words = ("disk is full", "no space left on device", "disk full", "is full")
    return any(w in said for w in words)


def ping(engine: Engine) -> tuple[bool, str]:
    """Whether the database answers a trivial query, and a line saying so."""
    try:
        with engine.connect() as conn:
            conn.execute(select(1))
    except SQLAlchemyError as exc:
        text = str(getattr(exc, "orig", None) or exc).strip()
        first = (text.splitlines() or [type(exc).__name__])[0][:300]
        return False, f"unavailable: {first}"
    return True, f"reachable ({engine.dialect.name})"


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


def states_with_prefix(engine: Engine, prefix: str) -> dict[str, Any]:
    """Every shared state value whose key starts with `prefix`, by key."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(service_state.c.key, service_state.c.value).where(
                service_state.c.key.startswith(prefix, autoescape=True)
            )
        ).all()
    # SQLite's LIKE ignores ASCII case: "Deploy:a" matches "deploy:%" there.
    return {k: json.loads(v) if isinstance(v, str) else v for k, v in rows if k.startswith(prefix)}


def set_state(engine: Engine, key: str, value: Any) -> None:
    """Write one shared state value (insert or update)."""
    for _attempt in range(2):
        now = _utcnow()
        try:
            with engine.begin() as conn:
                updated = conn.execute(
                    service_state.update()
                    .where(service_state.c.key == key)
                    .values(value=value, updated_at=now)
                ).rowcount
                if not updated:
                    conn.execute(
                        service_state.insert().values(key=key, value=value, updated_at=now)
                    )
            return
        except IntegrityError:
            continue  # another process inserted the key meanwhile: update it instead
    raise Conflict(f"shared state {key!r} kept changing while it was written; retry")

"""Schema migrations with Alembic: every start upgrades the database to `head` under a lock.

The revisions live in `versions/` beside this file and ship inside the package; there is
no alembic.ini (`alembic_config` builds the Config). `loraflow.db.make_engine` calls
`upgrade`, which takes the schema lock (a file lock beside a SQLite file, `pg_advisory_lock`
on PostgreSQL, `GET_LOCK` on MySQL/MariaDB), so any number of workers may start at once.

A database made before migrations existed (tables, `schema_info`, no `alembic_version`) is
adopted: the baseline revision creates only the tables it lacks, and records the revision.
A database at a revision this code does not know (migrated by a newer loraflow) is refused.

Adding a revision (developers):

1. Change the tables in `loraflow/db.py`.
2. Write the revision from the difference between a database at `head` and the new tables::

       .venv/bin/python -c "from loraflow import db, migrations; \\
           print(migrations.new_revision(db.metadata, 'add adapters.notes'))"

   It lands in `versions/`; `ruff format` it, read it, name constraints and indexes, keep
   MySQL variants (`with_variant`) as in the baseline, and write `downgrade` if it can be
   undone. Never edit a released revision, and never import `loraflow.db` from one: a
   revision states its own columns, so later edits to db.py do not change what it did.
3. `tests/unit/test_migrations.py` checks that `head` equals `db.metadata` exactly (on
   SQLite and the real servers) and that rows in every table survive an upgrade; a new
   table needs a row in its `ROWS`.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, MetaData, create_engine, inspect, text

from loraflow.errors import ConfigError
from loraflow.locks import file_lock

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

# Alembic is imported where it is used: it costs ~0.1 s, and most commands never open the
# database.

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
VERSIONS = HERE / "versions"
BASELINE = "0001_baseline"
# A table every database made before migrations has (the old code always wrote it).
LEGACY_MARKER = "schema_info"
# Any fixed 64-bit number works; PostgreSQL scopes advisory locks to one database.
PG_LOCK_KEY = 0x6C6F7261666C6F77  # "loraflow" in ASCII
# A worker waits this long for another one's migration before it gives up.
MYSQL_LOCK_SECONDS = 600


def alembic_config(versions: Path | None = None) -> Config:
    """The Alembic Config of loraflow's revisions (`versions` replaces the folder, for tests)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("path_separator", "os")
    # ConfigParser interpolates "%": a folder name holding one must not break the path.
    cfg.set_main_option("script_location", str(HERE).replace("%", "%%"))
    cfg.set_main_option("version_locations", str(versions or VERSIONS).replace("%", "%%"))
    return cfg


@lru_cache(maxsize=8)
def _script(versions: Path | None) -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(versions))


def head_revision(versions: Path | None = None) -> str:
    """The newest revision this code knows."""
    head = _script(versions).get_current_head()
    if head is None:  # pragma: no cover - the package ships its revisions
        raise ConfigError(f"no schema revisions found in {versions or VERSIONS}")
    return head


def known_revision(revision: str, versions: Path | None = None) -> bool:
    """Whether `revision` is one of this code's revisions."""
    return any(s.revision == revision for s in _script(versions).walk_revisions())


def current_revision(conn: Connection) -> str | None:
    """The database's revision; None before its first migration."""
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


def upgrade(
    engine: Engine, lock_file: Path | None = None, versions: Path | None = None
) -> tuple[str | None, str]:
    """Bring the database to `head` under the schema lock; (revision before, revision after).

    `lock_file` guards a SQLite database (its `.lock` beside it); server databases are
    locked on the server. Raises ConfigError when the database is newer than this code.
    """
    head = head_revision(versions)
    # Fast path for every start after the first: one query, no lock.
    with engine.connect() as conn:
        before = current_revision(conn)
    if before == head:
        return before, head
    with file_lock(lock_file) if lock_file else nullcontext(), _server_lock(engine) as conn:
        before = current_revision(conn)  # another worker may have migrated meanwhile
        conn.commit()
        if before is None and inspect(conn).has_table(LEGACY_MARKER):
            log.info("database made before migrations: adopting it at %s", BASELINE)
        elif before is not None and not known_revision(before, versions):
            raise newer_than_code(before, head)
        if before != head:
            from alembic import command

            cfg = alembic_config(versions)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            conn.commit()
            log.info("database schema upgraded from %s to %s", before or "(empty)", head)
    return before, head


def newer_than_code(revision: str, head: str) -> ConfigError:
    return ConfigError(
        f"the database schema is at revision {revision!r}, which this loraflow does not know "
        f"(its newest is {head!r}): a newer loraflow has migrated this database",
        hint="upgrade loraflow to the version that migrated it (or newer), "
        "or restore a backup made by this version",
    )


@contextmanager
def _server_lock(engine: Engine) -> Iterator[Connection]:
    """A connection holding the server's schema lock (no lock to take on SQLite)."""
    with engine.connect() as conn:
        name = conn.dialect.name
        if name == "postgresql":
            # Session-level: held across the migration's own transactions until unlocked.
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": PG_LOCK_KEY})
            conn.commit()
            try:
                yield conn
            finally:
                conn.rollback()
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": PG_LOCK_KEY})
                conn.commit()
        elif name in ("mysql", "mariadb"):
            # GET_LOCK is server-wide: the database name keeps two instances apart (64 chars).
            lock = f"loraflow.schema.{conn.execute(text('SELECT DATABASE()')).scalar()}"[:64]
            got = conn.execute(
                text("SELECT GET_LOCK(:n, :t)"), {"n": lock, "t": MYSQL_LOCK_SECONDS}
            ).scalar()
            conn.commit()
            if got != 1:
                raise ConfigError(
                    f"another process held the schema lock {lock!r} for more than "
                    f"{MYSQL_LOCK_SECONDS}s while migrating the database",
                    hint="wait for it to finish, then start again",
                )
            try:
                yield conn
            finally:
                conn.rollback()
                conn.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": lock})
                conn.commit()
        else:
            yield conn


def new_revision(metadata: MetaData, message: str, versions: Path | None = None) -> str:
    """Write a revision for the difference between `head` and `metadata` (developers only).

    The difference is taken against a scratch SQLite database upgraded to `head`; returns the
    new file's path.
    """
    from alembic import command

    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite:///{tmp}/scratch.db")
        try:
            upgrade(engine, versions=versions)
            with engine.connect() as conn:
                cfg = alembic_config(versions)
                cfg.attributes["connection"] = conn
                cfg.attributes["target_metadata"] = metadata
                # Numbered like the baseline ("0002_add_adapters_notes"), the file named alike.
                number = sum(1 for _ in _script(versions).walk_revisions()) + 1
                slug = re.sub(r"[^a-z0-9]+", "_", message.lower()).strip("_")[:40]
                cfg.set_main_option("file_template", "%%(rev)s")
                made: Any = command.revision(
                    cfg, message=message, autogenerate=True, rev_id=f"{number:04d}_{slug}"
                )
        finally:
            engine.dispose()
    _script.cache_clear()
    script = made[0] if isinstance(made, list) else made
    return str(script.path)

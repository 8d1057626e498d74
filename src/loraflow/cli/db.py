"""`loraflow db current|upgrade`: the database's schema revision, and migrating it by hand.

Every start (server, worker, command) upgrades the schema by itself; these commands show
where a database stands and migrate it ahead of a start (e.g. before rolling out workers).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer

from loraflow import db
from loraflow.cli.common import AsJson, DataDir, app, console, make_settings, print_json

if TYPE_CHECKING:
    from pathlib import Path

    from sqlalchemy import Engine

db_app = typer.Typer(help="Database schema: its revision, and upgrades.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@contextmanager
def _unmigrated(data_dir: Path | None) -> Iterator[tuple[str, Engine]]:
    """The database URL and an engine on it that has not touched the schema yet."""
    settings = make_settings(data_dir=data_dir)
    engine = db.make_engine(settings.db_url, settings.db_busy_timeout, migrate=False)
    try:
        yield settings.db_url, engine
    finally:
        engine.dispose()


@db_app.command("current")
def current_cmd(as_json: AsJson = False, data_dir: DataDir = None) -> None:
    """Print the database's schema revision, this loraflow's newest, and whether they match."""
    with _unmigrated(data_dir) as (url, engine):
        current, head = db.schema_revision(engine, url)
    state = "up to date" if current == head else "behind: `loraflow db upgrade` or any start"
    if current is not None and current != head and not db.known_schema_revision(current):
        state = "newer than this loraflow: upgrade loraflow"
    if as_json:
        print_json({"current": current, "head": head, "up_to_date": current == head})
        return
    console.print(f"database: {db.redact_url(url)}")
    console.print(f"current:  {current or '(none: not migrated yet)'}")
    console.print(f"head:     {head}")
    console.print(f"status:   {state}")


@db_app.command("upgrade")
def upgrade_cmd(data_dir: DataDir = None) -> None:
    """Upgrade the database's schema to this loraflow's newest revision (what a start does)."""
    with _unmigrated(data_dir) as (url, engine):
        before, after = db.upgrade_schema(engine, url)
    if before == after:
        console.print(f"already at {after}: nothing to do")
    else:
        console.print(f"upgraded {db.redact_url(url)}: {before or '(none)'} -> {after}")

"""Operations commands: backup and restore of a whole data dir."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from loraflow.cli.common import DataDir, app, console, make_settings


@app.command()
def backup(
    to: Annotated[
        Path | None, typer.Option("--to", help="Archive path (default: DATA_DIR/backups/…).")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Write one verified archive of the data dir (database, stores, adapters, uploads).

    Safe while the service runs: ingests and deletes wait only while a snapshot is taken.
    """
    from loraflow import db
    from loraflow.services.ops.backup import create_backup

    waiting: list[bool] = []

    def on_wait() -> None:
        if not waiting:
            waiting.append(True)
            console.print("waiting for a running ingest or delete to finish…")

    settings = make_settings(data_dir=data_dir)
    engine = db.make_engine(settings.db_url)
    report = create_backup(settings, engine, to, on_wait=on_wait)
    rows = sum(report.tables.values())
    console.print(
        f"backup written: {report.path}\n"
        f"  {report.files} files, {rows} database rows, {report.bytes / 1e6:.1f} MB "
        f"in {report.seconds:.1f}s"
    )


@app.command()
def restore(
    archive: Annotated[Path, typer.Argument(help="A .tar.gz made by `loraflow backup`.")],
    force: Annotated[
        bool, typer.Option("--force", help="Replace a data dir / database that is not empty.")
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Restore an archive into an empty data dir, verifying every checksum first.

    Refused while a loraflow service runs on that data dir.
    """
    from loraflow.services.ops.backup import restore_backup

    report = restore_backup(archive, make_settings(data_dir=data_dir), force=force)
    console.print(
        f"restored {report.files} files and {sum(report.tables.values())} database rows "
        f"into {report.data_dir} (backup of {report.created_at}, loraflow {report.source_version})"
    )
    for w in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {w}")

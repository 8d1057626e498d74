"""Schema migrations: head equals db.metadata, rows survive upgrades, old databases are adopted.

Runs on SQLite and on the real PostgreSQL and MariaDB servers when the test setup started them.
"""

from __future__ import annotations

import multiprocessing as mp
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from loraflow import db, migrations
from loraflow.errors import ConfigError

NOW = datetime(2026, 12, 6, 10, 30, 15, 123456, tzinfo=UTC)
LATER = "0900_test_adapter_notes"
# The newest real revision, which LATER_REVISION follows.
HEAD = migrations.head_revision()

# One realistic row in every table of the baseline.
ROWS: dict[str, dict[str, Any]] = {
    "service_state": {
        "key": "model_selection",
        "value": {"engine": "local", "adapter": "support-bot"},
        "updated_at": NOW,
    },
    "kb_collections": {
        "id": "c0ffee00c0ffee00c0ffee00c0ffee00",
        "name": "handbook",
        "embedding_model": "bundled:all-minilm-l6-v2",
        "chunk_size": 512,
        "chunk_overlap": 64,
        "index_dir": "collections/c0ffee00c0ffee00c0ffee00c0ffee00",
        "reembed": None,
        "created_at": NOW,
    },
    "assistants": {
        "name": "support",
        "description": "Answers from the handbook",
        "system_prompt": "You are a helpful support agent. Cite the handbook.",
        "engine": "local",
        "adapter": "support-bot",
        "collections": ["handbook"],
        "generation": {"temperature": 0.2, "max_new_tokens": 256},
        "retrieval": {"top_k": 4, "hybrid": True},
        "created_at": NOW,
        "updated_at": NOW,
    },
    "simple_lora_tasks": {
        "task_name": "support-bot-v1",
        "base_model": "bundled:smollm2",
        "dataset_file": "uploads/3f2a.jsonl",
        "dataset_type": "alpaca",
        "output_path": "lora_adapters/support-bot",
        "training_params": {"epochs": 3, "lora_r": 8, "learning_rate": 0.0002},
        "status": "completed",
        "progress": 1.0,
        "current_epoch": 3,
        "message": "done",
        "created_at": NOW,
        "started_at": NOW,
        "completed_at": NOW,
        "step": 120,
        "total_steps": 120,
        "loss": 0.8125,
        "eval_loss": 0.9375,
        "eta_seconds": 0.0,
        "error": None,
        "pid": None,
        "cancel_requested": False,
        "resumable": False,
        "owner": "host-a:1234:5f3e",
        "heartbeat_at": NOW,
        "executor": "ray",
        "node": "10.0.0.7",
        "resources": {"CPU": 1, "GPU": 1},
        "ray_id": "7a1b2c3d",
    },
    "adapters": {
        "id": "a1b2c3d4a1b2c3d4a1b2c3d4a1b2c3d4",
        "name": "support-bot",
        "version": 1,
        "type": "lora",
        "base_model": "bundled:smollm2",
        "path": "lora_adapters/support-bot",
        "description": "Support answers, tuned on the handbook Q&A",
        "dataset": "uploads/3f2a.jsonl",
        "metrics": {"eval_loss": 0.9375},
        "file_size_mb": 1.5,
        "checksum_sha256": "ab" * 32,
        "tags": ["support", "v1"],
        "rank": 8,
        "alpha": 32.0,
        "target_modules": ["q_proj", "v_proj"],
        "source": "trained",
        "status": "ok",
        "created_at": NOW,
        "updated_at": NOW,
    },
    "adapter_validations": {
        "id": "11112222333344441111222233334444",
        "adapter_id": "a1b2c3d4a1b2c3d4a1b2c3d4a1b2c3d4",
        "checksum_sha256": "ab" * 32,
        "mode": "quick",
        "score": 87.5,
        "grade": "good",
        "report": {"checks": [{"name": "loads", "ok": True}]},
        "created_at": NOW,
    },
    "deployments": {
        "target": "support",
        "strategy": "canary",
        "state": {"variants": [{"name": "v1", "adapter": "support-bot", "weight": 100}]},
        "previous": None,
        "version": 3,
        "updated_at": NOW,
    },
    "deployment_events": {
        "target": "support",
        "action": "deploy",
        "status": "ok",
        "detail": {"variant": "v1"},
        "created_at": NOW,
    },
    "adapter_workflows": {
        "id": "f00df00df00df00df00df00df00df00d",
        "kind": "merge_validate_deploy",
        "status": "succeeded",
        "spec": {"adapters": ["support-bot", "tone"], "method": "linear"},
        "steps": [{"name": "merge", "status": "succeeded"}],
        "result": {"adapter": "support-tone"},
        "error": None,
        "cancel_requested": False,
        "owner": "host-a:4242",
        "created_at": NOW,
        "updated_at": NOW,
    },
    "memory_projects": {
        "id": "9999aaaa9999aaaa9999aaaa9999aaaa",
        "name": "The Lighthouse",
        "description": "A mystery on a northern island",
        "created_at": NOW,
        "updated_at": NOW,
    },
    "memory_entries": {
        "id": "e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1",
        "entry_id": "e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1",
        "project_id": "9999aaaa9999aaaa9999aaaa9999aaaa",
        "version": 1,
        "current": True,
        "kind": "character",
        "title": "Mara, the keeper",
        "content": "Mara keeps the lighthouse; she never leaves after dusk.",
        "keywords": ["Mara", "keeper"],
        "importance": 4,
        "always_on": False,
        "chapter": 1,
        "position": None,
        "note": None,
        "created_at": NOW,
        "updated_at": NOW,
    },
    "memory_suggestions": {
        "id": "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a",
        "project_id": "9999aaaa9999aaaa9999aaaa9999aaaa",
        "kind": "location",
        "title": "The cove",
        "content": "A cove below the cliffs where boats land at low tide.",
        "keywords": ["cove"],
        "evidence": "They pulled the boat into the cove.",
        "language": "en",
        "status": "pending",
        "entry_id": None,
        "created_at": NOW,
    },
    "story_passages": {
        "project_id": "9999aaaa9999aaaa9999aaaa9999aaaa",
        "prompt": "Mara climbs the stairs",
        "text": "The stairs wound up into the dark; Mara counted each one.",
        "meta": {"model": "local", "tokens": 14},
        "created_at": NOW,
    },
    "adapter_versions": {"name": "support-bot", "top": 1},
    "monitor_requests": {
        "target": "support",
        "variant": "v1",
        "ok": True,
        "seconds": 0.25,
        "worker": "host-a:4242",
        "at": 1_796_553_015.5,
    },
    "monitor_resources": {
        "worker": "host-a:4242",
        "cpu_percent": 12.5,
        "memory_percent": 40.0,
        "rss_bytes": 812_000_000.0,
        "gpu_memory_percent": None,
        "gpu_util_percent": None,
        "at": 1_796_553_015.5,
    },
    "alerts": {
        "rule": "error_rate",
        "target": "support",
        "variant": "v1",
        "open_key": "error_rate|support|v1",
        "state": "firing",
        "value": 0.125,
        "threshold": 0.05,
        "started_at": NOW,
        "fired_at": NOW,
        "ended_at": None,
        "updated_at": NOW,
        "detail": {"window_s": 300},
    },
}

# A later revision, as a developer would write it: one nullable column.
LATER_REVISION = f'''"""Test only: adapters.notes."""

import sqlalchemy as sa
from alembic import op

revision = "{LATER}"
down_revision = "{HEAD}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("adapters") as batch:
        batch.add_column(sa.Column("notes", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("adapters") as batch:
        batch.drop_column("notes")
'''


def _versions_with_a_later_revision(tmp_path: Path) -> Path:
    """A copy of the real revisions plus LATER_REVISION."""
    versions = tmp_path / "versions"
    versions.mkdir()
    for f in migrations.VERSIONS.glob("*.py"):
        shutil.copy(f, versions / f.name)
    (versions / f"{LATER}.py").write_text(LATER_REVISION)
    return versions


def _fill(engine: sa.Engine) -> None:
    assert set(ROWS) | {"schema_info"} == set(db.metadata.tables)  # a new table needs a row
    with engine.begin() as conn:
        for table in db.metadata.sorted_tables:
            if table.name in ROWS:
                conn.execute(table.insert().values(ROWS[table.name]))


def _same(value: Any, expected: Any) -> bool:
    if isinstance(expected, datetime):  # SQLite and MySQL give naive UTC back
        return value.replace(tzinfo=None) == expected.replace(tzinfo=None)
    return bool(value == expected)


def _assert_rows_kept(engine: sa.Engine, *, made_before_migrations: bool = False) -> None:
    with engine.connect() as conn:
        for name, expected in ROWS.items():
            rows = conn.execute(sa.select(db.metadata.tables[name])).mappings().all()
            assert len(rows) == 1, name
            if made_before_migrations:  # the columns added later are new and empty
                added = ADDED_LATER.get(name, ())
                assert all(rows[0][k] is None for k in added), name
                expected = {k: v for k, v in expected.items() if k not in added}
            wrong = {k: rows[0][k] for k, v in expected.items() if not _same(rows[0][k], v)}
            assert not wrong, (name, wrong)
        assert conn.execute(sa.select(db.schema_info)).all() == [(1, db.SCHEMA_VERSION)]


def _versions_rows(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars())


def test_head_equals_the_tables_of_db_py(db_url: str) -> None:
    """Autogenerate finds nothing to change after an upgrade of an empty database."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = db.make_engine(db_url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diffs = compare_metadata(ctx, db.metadata)
    engine.dispose()
    assert diffs == []


def test_rows_of_every_table_survive_a_later_revision(db_url: str, tmp_path: Path) -> None:
    engine = db.make_engine(db_url)
    assert _versions_rows(engine) == [HEAD]
    _fill(engine)
    versions = _versions_with_a_later_revision(tmp_path)
    lock = tmp_path / "schema.lock"
    assert migrations.upgrade(engine, lock, versions) == (HEAD, LATER)
    assert _versions_rows(engine) == [LATER]
    _assert_rows_kept(engine)
    columns = {c["name"]: c for c in sa.inspect(engine).get_columns("adapters")}
    assert columns["notes"]["nullable"]
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT notes FROM adapters")).scalar_one() is None
    # Indexes and constraints of the copied table (SQLite's batch mode) are still there.
    indexes = {i["name"] for i in sa.inspect(engine).get_indexes("adapters")}
    assert "ix_adapters_name" in indexes
    assert migrations.upgrade(engine, lock, versions) == (LATER, LATER)  # nothing left to do
    engine.dispose()


# Columns that revisions after the baseline added: a database made before migrations lacks them.
ADDED_LATER = {
    "simple_lora_tasks": ("owner", "heartbeat_at", "executor", "node", "resources", "ray_id"),
}


def _pre_migration_database(url: str, drop: str | None = None) -> None:
    """What loraflow made before migrations: create_all, a schema_info row, rows, no versions."""
    engine = sa.create_engine(url)
    db.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(db.schema_info.insert().values(id=1, version=1))
    _fill(engine)
    with engine.begin() as conn:
        for table, columns in ADDED_LATER.items():
            for column in columns:
                conn.execute(sa.text(f"ALTER TABLE {table} DROP COLUMN {column}"))
    if drop:
        db.metadata.tables[drop].drop(engine)
    engine.dispose()


def test_a_database_made_before_migrations_is_adopted(db_url: str) -> None:
    _pre_migration_database(db_url, drop="alerts")  # a table added after it was made
    engine = db.make_engine(db_url)
    assert _versions_rows(engine) == [migrations.head_revision()]
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(db.alerts)).scalar() == 0
    with engine.begin() as conn:
        conn.execute(db.alerts.insert().values(ROWS["alerts"]))
    _assert_rows_kept(engine, made_before_migrations=True)
    engine.dispose()


def test_the_app_serves_a_data_dir_made_before_migrations(
    tmp_path: Path, model_cache: Path
) -> None:
    """The app answers from the rows, on an engine opened as a server start opens it."""
    from fastapi.testclient import TestClient

    from loraflow.api.app import create_app
    from loraflow.config import Settings
    from loraflow.services.runtime import Runtime, prepare_data_dir

    data = tmp_path / "data"
    data.mkdir()
    _pre_migration_database(f"sqlite:///{data / 'loraflow.db'}")
    settings = Settings(data_dir=data, cache_dir=model_cache, enable_ui=False)
    prepare_data_dir(settings)
    # build_runtime opens the database this way; its models and stores are not needed here.
    engine = db.make_engine(settings.db_url, settings.db_busy_timeout)
    rt = Runtime(settings, engine, None, None, None)  # type: ignore[arg-type]
    with TestClient(create_app(settings, runtime=rt)) as client:
        got = client.get("/api/memory/projects")
    assert got.status_code == 200, got.text
    assert [p["name"] for p in got.json()["projects"]] == ["The Lighthouse"]
    engine = sa.create_engine(settings.db_url)
    assert _versions_rows(engine) == [migrations.head_revision()]
    engine.dispose()


def _start(url: str, barrier: Any) -> None:
    barrier.wait()  # every worker migrates at the same moment
    db.make_engine(url).dispose()


def test_workers_starting_together_migrate_once(db_url: str) -> None:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_start, args=(db_url, barrier)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    engine = db.make_engine(db_url)
    assert _versions_rows(engine) == [migrations.head_revision()]
    with engine.connect() as conn:
        assert len(conn.execute(db.schema_info.select()).all()) == 1
    engine.dispose()


def test_a_database_newer_than_the_code_is_refused(db_url: str, tmp_path: Path) -> None:
    engine = db.make_engine(db_url)
    migrations.upgrade(engine, tmp_path / "schema.lock", _versions_with_a_later_revision(tmp_path))
    engine.dispose()
    with pytest.raises(ConfigError) as info:
        db.make_engine(db_url)
    assert repr(LATER) in info.value.message and "newer loraflow" in info.value.message
    assert "upgrade loraflow" in (info.value.hint or "")


def _cli(*args: str) -> Any:
    from loraflow.cli import app

    return CliRunner().invoke(app, list(args))


def test_db_current_and_upgrade_commands(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    head = migrations.head_revision()
    before = _cli("db", "current", "--data-dir", data)
    assert before.exit_code == 0, before.output
    assert "not migrated yet" in before.output and f"head:     {head}" in before.output
    upgraded = _cli("db", "upgrade", "--data-dir", data)
    assert upgraded.exit_code == 0, upgraded.output
    assert f"(none) -> {head}" in upgraded.output
    again = _cli("db", "upgrade", "--data-dir", data)
    assert f"already at {head}" in again.output
    now = _cli("db", "current", "--json", "--data-dir", data)
    assert '"up_to_date": true' in now.output and f'"current": "{head}"' in now.output


def test_db_commands_on_a_database_newer_than_the_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from loraflow.cli import main

    data = tmp_path / "data"
    engine = db.make_engine(f"sqlite:///{data / 'loraflow.db'}")
    migrations.upgrade(engine, None, _versions_with_a_later_revision(tmp_path))
    engine.dispose()
    shown = _cli("db", "current", "--data-dir", str(data))
    assert f"current:  {LATER}" in shown.output and "upgrade loraflow" in shown.output
    monkeypatch.setattr("sys.argv", ["loraflow", "db", "upgrade", "--data-dir", str(data)])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == ConfigError.exit_code
    said = capsys.readouterr().err
    assert LATER in said and "upgrade loraflow" in said and "Traceback" not in said

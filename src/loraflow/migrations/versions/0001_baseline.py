"""Baseline: the schema loraflow had when migrations began (SCHEMA_VERSION 1).

Revision ID: 0001_baseline
Revises:
Create Date: 2026-12-06

Written out table by table, never from `loraflow.db.metadata`: what this revision creates
must not change when db.py does. A database made before migrations (by `create_all`) already
has these tables; only the ones it lacks are created, and its rows stay as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0001_baseline"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The column types of db.py as they were at this revision (MySQL/MariaDB variants included).
_MYSQL = ("mysql", "mariadb")
_MYSQL_TABLE: dict[str, Any] = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def _float() -> Any:
    return sa.Float().with_variant(mysql.DOUBLE(asdecimal=False), *_MYSQL)


def _text() -> Any:
    return sa.Text().with_variant(mysql.LONGTEXT(), *_MYSQL)


def _datetime() -> Any:
    return sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), *_MYSQL)


def _key_string(length: int) -> Any:
    return sa.String(length).with_variant(mysql.VARCHAR(min(length, 768)), *_MYSQL)


def _col(name: str, type_: Any, nullable: bool = False, **kw: Any) -> sa.Column[Any]:
    return sa.Column(name, type_, nullable=nullable, **kw)


def _ix(table: str, *columns: str) -> sa.Index:
    return sa.Index(f"ix_{table}_{'_'.join(columns)}", *columns)


def _tables() -> dict[str, list[Any]]:
    """Every table: its columns, constraints and indexes."""
    return {
        "service_state": [
            _col("key", sa.String(128), primary_key=True),
            _col("value", sa.JSON()),
            _col("updated_at", _datetime()),
        ],
        "schema_info": [
            _col("id", sa.Integer(), primary_key=True),
            _col("version", sa.Integer()),
        ],
        "kb_collections": [
            _col("id", sa.String(32), primary_key=True),
            _col("name", sa.String(64), unique=True),
            _col("embedding_model", sa.String(512)),
            _col("chunk_size", sa.Integer()),
            _col("chunk_overlap", sa.Integer()),
            _col("index_dir", sa.String(1024)),
            _col("reembed", sa.JSON(), nullable=True),
            _col("created_at", _datetime()),
        ],
        "assistants": [
            _col("name", sa.String(64), primary_key=True),
            _col("description", _text()),
            _col("system_prompt", _text()),
            _col("engine", sa.String(16)),
            _col("adapter", sa.String(256), nullable=True),
            _col("collections", sa.JSON()),
            _col("generation", sa.JSON()),
            _col("retrieval", sa.JSON()),
            _col("created_at", _datetime()),
            _col("updated_at", _datetime()),
        ],
        "simple_lora_tasks": [
            _col("id", sa.Integer(), primary_key=True, autoincrement=True),
            _col("task_name", sa.String(128), unique=True),
            _col("base_model", sa.String(512)),
            _col("dataset_file", sa.String(512)),
            _col("dataset_type", sa.String(32)),
            _col("output_path", sa.String(1024)),
            _col("training_params", sa.JSON()),
            _col("status", sa.String(32)),
            _col("progress", _float()),
            _col("current_epoch", sa.Integer()),
            _col("message", _text(), nullable=True),
            _col("created_at", _datetime()),
            _col("started_at", _datetime(), nullable=True),
            _col("completed_at", _datetime(), nullable=True),
            _col("step", sa.Integer()),
            _col("total_steps", sa.Integer()),
            _col("loss", _float(), nullable=True),
            _col("eval_loss", _float(), nullable=True),
            _col("eta_seconds", _float(), nullable=True),
            _col("error", _text(), nullable=True),
            _col("pid", sa.Integer(), nullable=True),
            _col("cancel_requested", sa.Boolean()),
            _col("resumable", sa.Boolean()),
            _ix("simple_lora_tasks", "status"),
        ],
        "adapters": [
            _col("id", sa.String(32), primary_key=True),
            _col("name", sa.String(128)),
            _col("version", sa.Integer()),
            _col("type", sa.String(16)),
            _col("base_model", sa.String(512)),
            _col("path", _key_string(1024), unique=True),
            _col("description", _text()),
            _col("dataset", sa.String(512), nullable=True),
            _col("metrics", sa.JSON()),
            _col("file_size_mb", _float()),
            _col("checksum_sha256", sa.String(64)),
            _col("tags", sa.JSON()),
            _col("rank", sa.Integer()),
            _col("alpha", _float()),
            _col("target_modules", sa.JSON()),
            _col("source", sa.String(16)),
            _col("status", sa.String(16)),
            _col("created_at", _datetime()),
            _col("updated_at", _datetime()),
            sa.UniqueConstraint("name", "version", name="uq_adapters_name_version"),
            _ix("adapters", "name"),
        ],
        "adapter_validations": [
            _col("id", sa.String(32), primary_key=True),
            _col("adapter_id", sa.String(32), nullable=True),
            _col("checksum_sha256", sa.String(64), nullable=True),
            _col("mode", sa.String(16)),
            _col("score", _float()),
            _col("grade", sa.String(16)),
            _col("report", sa.JSON()),
            _col("created_at", _datetime()),
            _ix("adapter_validations", "adapter_id"),
        ],
        "deployments": [
            _col("target", sa.String(64), primary_key=True),
            _col("strategy", sa.String(16)),
            _col("state", sa.JSON()),
            _col("previous", sa.JSON(), nullable=True),
            _col("version", sa.Integer()),
            _col("updated_at", _datetime()),
        ],
        "deployment_events": [
            _col("id", sa.Integer(), primary_key=True, autoincrement=True),
            _col("target", sa.String(64)),
            _col("action", sa.String(32)),
            _col("status", sa.String(16)),
            _col("detail", sa.JSON()),
            _col("created_at", _datetime()),
            _ix("deployment_events", "target"),
        ],
        "adapter_workflows": [
            _col("id", sa.String(32), primary_key=True),
            _col("kind", sa.String(32)),
            _col("status", sa.String(16)),
            _col("spec", sa.JSON()),
            _col("steps", sa.JSON()),
            _col("result", sa.JSON(), nullable=True),
            _col("error", _text(), nullable=True),
            _col("cancel_requested", sa.Boolean()),
            _col("owner", sa.String(128), nullable=True),
            _col("created_at", _datetime()),
            _col("updated_at", _datetime()),
            _ix("adapter_workflows", "status"),
        ],
        "memory_projects": [
            _col("id", sa.String(32), primary_key=True),
            _col("name", sa.String(128), unique=True),
            _col("description", _text()),
            _col("created_at", _datetime()),
            _col("updated_at", _datetime()),
        ],
        "memory_entries": [
            _col("id", sa.String(32), primary_key=True),
            _col("entry_id", sa.String(32)),
            _col("project_id", sa.String(32)),
            _col("version", sa.Integer()),
            _col("current", sa.Boolean()),
            _col("kind", sa.String(16)),
            _col("title", sa.String(256)),
            _col("content", _text()),
            _col("keywords", sa.JSON()),
            _col("importance", sa.Integer()),
            _col("always_on", sa.Boolean()),
            _col("chapter", sa.Integer(), nullable=True),
            _col("position", sa.Integer(), nullable=True),
            _col("note", _text(), nullable=True),
            _col("created_at", _datetime()),
            _col("updated_at", _datetime()),
            _ix("memory_entries", "entry_id"),
            _ix("memory_entries", "project_id"),
            _ix("memory_entries", "current"),
        ],
        "memory_suggestions": [
            _col("id", sa.String(32), primary_key=True),
            _col("project_id", sa.String(32)),
            _col("kind", sa.String(16)),
            _col("title", sa.String(256)),
            _col("content", _text()),
            _col("keywords", sa.JSON()),
            _col("evidence", _text()),
            _col("language", sa.String(8)),
            _col("status", sa.String(16)),
            _col("entry_id", sa.String(32), nullable=True),
            _col("created_at", _datetime()),
            _ix("memory_suggestions", "project_id"),
            _ix("memory_suggestions", "status"),
        ],
        "story_passages": [
            _col("id", sa.Integer(), primary_key=True, autoincrement=True),
            _col("project_id", sa.String(32)),
            _col("prompt", _text()),
            _col("text", _text()),
            _col("meta", sa.JSON()),
            _col("created_at", _datetime()),
            _ix("story_passages", "project_id"),
        ],
        "adapter_versions": [
            _col("name", sa.String(128), primary_key=True),
            _col("top", sa.Integer()),
        ],
        "monitor_requests": [
            _col("id", sa.Integer(), primary_key=True, autoincrement=True),
            _col("target", sa.String(64)),
            _col("variant", sa.String(64)),
            _col("ok", sa.Boolean()),
            _col("seconds", _float()),
            _col("worker", sa.String(64)),
            _col("at", _float()),
            _ix("monitor_requests", "at"),
        ],
        "monitor_resources": [
            _col("id", sa.Integer(), primary_key=True, autoincrement=True),
            _col("worker", sa.String(64)),
            _col("cpu_percent", _float()),
            _col("memory_percent", _float()),
            _col("rss_bytes", _float()),
            _col("gpu_memory_percent", _float(), nullable=True),
            _col("gpu_util_percent", _float(), nullable=True),
            _col("at", _float()),
            _ix("monitor_resources", "at"),
        ],
        "alerts": [
            _col("id", sa.Integer(), primary_key=True, autoincrement=True),
            _col("rule", sa.String(32)),
            _col("target", sa.String(64)),
            _col("variant", sa.String(64)),
            _col("open_key", sa.String(191), nullable=True, unique=True),
            _col("state", sa.String(16)),
            _col("value", _float(), nullable=True),
            _col("threshold", _float()),
            _col("started_at", _datetime()),
            _col("fired_at", _datetime(), nullable=True),
            _col("ended_at", _datetime(), nullable=True),
            _col("updated_at", _datetime()),
            _col("detail", sa.JSON()),
            _ix("alerts", "state"),
        ],
    }


def upgrade() -> None:
    present = set(sa.inspect(op.get_bind()).get_table_names())
    for name, items in _tables().items():
        if name not in present:  # a database made before migrations has it already
            op.create_table(name, *items, **_MYSQL_TABLE)
    if "schema_info" not in present:
        # The pre-migration marker: version 1 is this baseline, and stays 1 from here on.
        op.bulk_insert(
            sa.table("schema_info", sa.column("id"), sa.column("version")),
            [{"id": 1, "version": 1}],
        )


def downgrade() -> None:
    for name in reversed(list(_tables())):
        op.drop_table(name)

"""Training jobs: a lease (owner, heartbeat_at) and where a job runs (executor, node, ...).

Revision ID: 0002_job_lease_and_executor
Revises: 0001_baseline
Create Date: 2026-12-06

A running job's owner renews `heartbeat_at`; only an expired lease marks the job
interrupted, so services on several hosts sharing one database never judge each other's
jobs by local process ids. `executor` (local or ray), `node`, `resources` and `ray_id` say
where a job runs. All new columns are nullable: existing rows keep their values.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0002_job_lease_and_executor"
down_revision: str | None = "0001_baseline"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MYSQL = ("mysql", "mariadb")


def upgrade() -> None:
    with op.batch_alter_table("simple_lora_tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("owner", sa.String(length=255), nullable=True))
        batch_op.add_column(
            sa.Column(
                "heartbeat_at",
                sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), *_MYSQL),
                nullable=True,
            )
        )
        batch_op.add_column(sa.Column("executor", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("node", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("resources", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("ray_id", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("simple_lora_tasks", schema=None) as batch_op:
        for name in ("ray_id", "resources", "node", "executor", "heartbeat_at", "owner"):
            batch_op.drop_column(name)

"""Alembic's environment: runs on the connection that `loraflow.migrations` hands over.

loraflow has no alembic.ini: `loraflow.migrations.alembic_config` builds the Config, and the
caller opens the connection (it already holds the schema lock on it).
"""

from __future__ import annotations

from alembic import context

config = context.config
connection = config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise RuntimeError(
        "loraflow migrations run on a live connection: use `loraflow db upgrade`, "
        "or loraflow.migrations.upgrade(engine)"
    )

context.configure(
    connection=connection,
    # Only `new_revision` passes the tables (autogenerate); upgrades need none.
    target_metadata=config.attributes.get("target_metadata"),
    # SQLite cannot ALTER most things: batch mode copies the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()

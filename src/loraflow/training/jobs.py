"""The job table: create, read, update and claim fine-tuning jobs (any process, one database)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, select, update

from loraflow.db import simple_lora_tasks as T
from loraflow.errors import InvalidInput, NotFound

STATUSES = ("pending", "running", "completed", "failed", "cancelled")
FINISHED = ("completed", "failed", "cancelled")


def now() -> datetime:
    return datetime.now(UTC)


def create_job(db: Engine, **values: Any) -> dict[str, Any]:
    """Insert a pending job; task names are unique."""
    with db.begin() as conn:
        taken = conn.execute(select(T.c.id).where(T.c.task_name == values["task_name"])).first()
        if taken is not None:
            raise InvalidInput(
                f"task name {values['task_name']!r} is already used by task {taken[0]}",
                hint="pick another task name",
            )
        row = {
            "status": "pending",
            "progress": 0.0,
            "current_epoch": 0,
            "step": 0,
            "total_steps": 0,
            "message": "queued",
            "created_at": now(),
            "cancel_requested": False,
            "resumable": False,
            **values,
        }
        job_id = conn.execute(T.insert().values(**row)).inserted_primary_key[0]
    return get_job(db, int(job_id))


def get_job(db: Engine, job_id: int) -> dict[str, Any]:
    if not 0 < job_id < 2**63:
        # Out of the database's integer range: the driver would raise OverflowError.
        raise NotFound(f"training task {job_id} does not exist")
    with db.connect() as conn:
        row = conn.execute(select(T).where(T.c.id == job_id)).mappings().first()
    if row is None:
        raise NotFound(f"training task {job_id} does not exist")
    return dict(row)


def list_jobs(db: Engine) -> list[dict[str, Any]]:
    with db.connect() as conn:
        rows = conn.execute(select(T).order_by(T.c.id.desc())).mappings().all()
    return [dict(r) for r in rows]


def update_job(
    db: Engine, job_id: int, *, where_status: tuple[str, ...] = (), **values: Any
) -> bool:
    """Set columns of one job (optionally only while in `where_status`); True if it changed."""
    stmt = update(T).where(T.c.id == job_id)
    if where_status:
        stmt = stmt.where(T.c.status.in_(where_status))
    with db.begin() as conn:
        return conn.execute(stmt.values(**values)).rowcount > 0


def claim_next(db: Engine, pid: int | None = None) -> dict[str, Any] | None:
    """Mark the oldest pending job running and return it; None when the queue is empty."""
    while True:
        with db.connect() as conn:
            row = conn.execute(
                select(T.c.id).where(T.c.status == "pending").order_by(T.c.id).limit(1)
            ).first()
        if row is None:
            return None
        # The status condition makes the claim atomic between processes sharing the database.
        if update_job(
            db,
            row[0],
            where_status=("pending",),
            status="running",
            started_at=now(),
            message="starting",
            error=None,
            pid=pid,
        ):
            return get_job(db, row[0])


def mark_interrupted(db: Engine, alive: Any) -> list[int]:
    """Jobs left running by a dead worker become failed and resumable; returns their ids.

    `alive(pid, started_at)` says whether the process recorded for a job claimed at
    `started_at` still runs it.
    """
    with db.connect() as conn:
        rows = conn.execute(
            select(T.c.id, T.c.pid, T.c.started_at).where(T.c.status == "running")
        ).all()
    lost = [job_id for job_id, pid, started in rows if not (pid and alive(pid, started))]
    for job_id in lost:
        update_job(
            db,
            job_id,
            where_status=("running",),
            status="failed",
            resumable=True,
            pid=None,
            error="interrupted: the service stopped while this job was running",
            message="interrupted by a service restart; resume it to continue from its last "
            "checkpoint",
            completed_at=now(),
        )
    return lost

"""The job table: create, read, update and claim fine-tuning jobs (any process, one database).

Liveness is a lease in the job row: the service that claims a job becomes its `owner` and,
with the process (or Ray task) that trains it, renews `heartbeat_at` every few seconds. Only
a lease that expired marks a running job interrupted, so services on several hosts sharing
one database never judge each other's jobs by their own process ids. A job whose owner ran
on this very host is also judged by its recorded pid, so a restart here marks its job at once.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select, update

from loraflow.db import simple_lora_tasks as T
from loraflow.errors import InvalidInput, NotFound

STATUSES = ("pending", "running", "completed", "failed", "cancelled")
FINISHED = ("completed", "failed", "cancelled")
EXECUTORS = ("local", "ray")
# A running job's lease: renewed every LEASE_S / 4 seconds, expired after LEASE_S without one.
LEASE_S = 60.0


def now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:  # SQLite and MySQL give naive UTC back
        return value.replace(tzinfo=UTC)
    return value


def _process_start(pid: int) -> float:
    import psutil

    return float(psutil.Process(pid).create_time())


HOST = socket.gethostname()
_OWNER: str | None = None


def owner_id() -> str:
    """This process as `host:pid:start`, the owner it writes into the jobs it claims."""
    global _OWNER
    pid = os.getpid()
    if _OWNER is None or _OWNER.split(":")[-2] != str(pid):  # a forked child is another owner
        _OWNER = f"{HOST}:{pid}:{_process_start(pid):.2f}"
    return _OWNER


def owner_host(owner: str | None) -> str | None:
    """The host part of an owner id; None for rows written before owners were recorded."""
    if not owner or owner.count(":") < 2:
        return None
    return owner.rsplit(":", 2)[0]


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


def claim_next(
    db: Engine,
    pid: int | None = None,
    *,
    owner: str | None = None,
    executor: str = "local",
    node: str | None = None,
) -> dict[str, Any] | None:
    """Mark the oldest pending job running and return it; None when the queue is empty.

    The claimer becomes the job's owner (`owner`, default this process) with a fresh lease.
    """
    owner = owner or owner_id()
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
            owner=owner,
            heartbeat_at=now(),
            executor=executor,
            node=node if node is not None else (HOST if executor == "local" else None),
            resources=None,
            ray_id=None,
        ):
            return get_job(db, row[0])


def owner_process_alive(owner: str | None) -> bool:
    """Whether an owner of this host still runs (another host's owners count as alive)."""
    host = owner_host(owner)
    if owner is None or host is None:
        return False
    if host != HOST:
        return True
    _, pid, start = owner.rsplit(":", 2)
    import psutil

    try:
        return abs(_process_start(int(pid)) - float(start)) < 0.5
    except (psutil.NoSuchProcess, ValueError):
        return False
    except psutil.Error:
        return True


def take_over(db: Engine, job_id: int, old_owner: str | None, new_owner: str) -> bool:
    """Become the owner of a running job if `old_owner` still holds it (atomic)."""
    stmt = (
        update(T)
        .where(T.c.id == job_id, T.c.status == "running")
        .where(T.c.owner.is_(None) if old_owner is None else T.c.owner == old_owner)
        .values(owner=new_owner, heartbeat_at=now())
    )
    with db.begin() as conn:
        return conn.execute(stmt).rowcount > 0


def renew_lease(db: Engine, job_id: int) -> bool:
    """Renew a running job's lease; False when the job is no longer running."""
    return update_job(db, job_id, where_status=("running",), heartbeat_at=now())


def lease_expired(
    job: dict[str, Any], lease_s: float = LEASE_S, at: datetime | None = None
) -> bool:
    """Whether a running job's lease (its last heartbeat, else its start) ran out."""
    last = _aware(job.get("heartbeat_at")) or _aware(job.get("started_at"))
    if last is None:
        return True
    return (at or now()) - last > timedelta(seconds=lease_s)


def mark_interrupted(
    db: Engine,
    alive: Callable[[int, datetime | None], bool],
    *,
    lease_s: float = LEASE_S,
    me: str | None = None,
) -> list[int]:
    """Running jobs whose owner is gone become failed and resumable; returns their ids.

    A job is gone when its lease expired (no heartbeat for `lease_s` seconds), whichever
    host owned it. A local job owned by another process of this host (a previous run of this
    service) is also gone as soon as its recorded process is: `alive(pid, started_at)` says
    whether the process recorded for a job claimed at `started_at` still runs it. Jobs owned
    by `me` (default this process) are left to it; another host's are judged by lease only.
    """
    me = me or owner_id()
    cols = (T.c.id, T.c.pid, T.c.started_at, T.c.owner, T.c.heartbeat_at, T.c.executor)
    with db.connect() as conn:
        rows = conn.execute(select(*cols).where(T.c.status == "running")).mappings().all()
    lost: dict[int, str] = {}
    at = now()
    for row in rows:
        if row["owner"] == me:
            continue
        if lease_expired(dict(row), lease_s, at):
            who = row["owner"] or "its service"
            lost[row["id"]] = (
                f"interrupted: no heartbeat from {who} for over {lease_s:g} s (its service or "
                "node stopped while this job was running)"
            )
            continue
        here = owner_host(row["owner"]) in (None, HOST)
        local = (row["executor"] or "local") == "local"
        if here and local and not (row["pid"] and alive(row["pid"], row["started_at"])):
            lost[row["id"]] = "interrupted: the service stopped while this job was running"
    for job_id, error in lost.items():
        update_job(
            db,
            job_id,
            where_status=("running",),
            status="failed",
            resumable=True,
            pid=None,
            error=error,
            message=(
                "interrupted by a service restart"
                if "service stopped" in error
                else "interrupted: its lease expired"
            )
            + "; resume it to continue from its last checkpoint",
            completed_at=now(),
        )
    return list(lost)

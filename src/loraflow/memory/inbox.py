"""Stored memory suggestions awaiting the writer's accept or reject."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import Engine, select

from loraflow import db
from loraflow.errors import Conflict, InvalidInput, NotFound
from loraflow.memory.projects import new_id
from loraflow.memory.suggestions import Suggestion

T = db.memory_suggestions
STATUSES = ("pending", "accepted", "rejected")
Status = Literal["pending", "accepted", "rejected"]


@dataclass
class StoredSuggestion(Suggestion):
    """A suggestion with its id and what the writer decided."""

    id: str = ""
    project_id: str = ""
    status: str = "pending"
    entry_id: str | None = None
    created_at: str = ""


def _from_row(r: Any) -> StoredSuggestion:
    return StoredSuggestion(
        kind=r.kind,
        title=r.title,
        content=r.content,
        keywords=list(r.keywords or []),
        evidence=r.evidence,
        language=r.language,
        id=r.id,
        project_id=r.project_id,
        status=r.status,
        entry_id=r.entry_id,
        created_at=str(r.created_at),
    )


def save_suggestions(
    engine: Engine, project_id: str, items: list[Suggestion]
) -> list[StoredSuggestion]:
    """Store new suggestions as pending, skipping titles already pending in this project."""
    pending = {s.title.casefold() for s in list_suggestions(engine, project_id, "pending")}
    rows = []
    for s in items:
        if s.title.casefold() in pending:
            continue
        pending.add(s.title.casefold())
        rows.append(
            {
                **asdict(s),
                "id": new_id(),
                "project_id": project_id,
                "status": "pending",
                "entry_id": None,
                "created_at": datetime.now(UTC),
            }
        )
    if rows:
        with engine.begin() as conn:
            conn.execute(T.insert(), rows)
    return [get_suggestion(engine, project_id, r["id"]) for r in rows]


def list_suggestions(
    engine: Engine, project_id: str, status: str | None = None
) -> list[StoredSuggestion]:
    """A project's suggestions, oldest first, optionally of one status."""
    q = select(T).where(T.c.project_id == project_id)
    if status is not None:
        if status not in STATUSES:
            raise InvalidInput(f"status {status!r} is not one of {', '.join(STATUSES)}")
        q = q.where(T.c.status == status)
    with engine.connect() as conn:
        rows = conn.execute(q.order_by(T.c.created_at, T.c.id)).all()
    return [_from_row(r) for r in rows]


def get_suggestion(engine: Engine, project_id: str, sid: str) -> StoredSuggestion:
    """One suggestion of this project."""
    with engine.connect() as conn:
        row = conn.execute(select(T).where(T.c.project_id == project_id, T.c.id == sid)).first()
    if row is None:
        raise NotFound(f"no suggestion {sid!r} in this project")
    return _from_row(row)


def decide(
    engine: Engine, project_id: str, sid: str, status: Status, entry_id: str | None = None
) -> StoredSuggestion:
    """Mark a pending suggestion accepted (with the entry it became) or rejected."""
    with engine.begin() as conn:
        done = conn.execute(
            T.update()
            .where(T.c.project_id == project_id, T.c.id == sid, T.c.status == "pending")
            .values(status=status, entry_id=entry_id)
        ).rowcount
    if not done:
        current = get_suggestion(engine, project_id, sid)
        raise Conflict(f"suggestion {sid!r} is already {current.status}")
    return get_suggestion(engine, project_id, sid)

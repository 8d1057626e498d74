"""Projects (one per story) in the database: create, find by id or name, rename, delete."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, select

from loraflow import db
from loraflow.errors import Conflict, InvalidInput, NotFound
from loraflow.memory.entries import check_text

MAX_PROJECT_NAME = 128
MAX_DESCRIPTION = 4000
P = db.memory_projects


@dataclass
class Project:
    """One story and its memory."""

    id: str
    name: str
    description: str
    created_at: str
    updated_at: str


def new_id() -> str:
    """A short random id for projects, entries and suggestions."""
    return uuid.uuid4().hex[:16]


def utcnow() -> datetime:
    """Now, in UTC."""
    return datetime.now(UTC)


def iso(value: Any) -> str:
    """A database timestamp as ISO 8601 with its UTC offset."""
    if isinstance(value, datetime):
        # SQLite hands back naive datetimes; they were written in UTC.
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    return str(value)


def _project(row: Any) -> Project:
    return Project(
        row.id, row.name, row.description or "", iso(row.created_at), iso(row.updated_at)
    )


def check_project_name(name: str) -> str:
    """A stripped project name of 1..128 characters (any language)."""
    clean = name.strip() if isinstance(name, str) else ""
    if clean:
        check_text(clean, "project name", MAX_PROJECT_NAME)
    if not clean or len(clean) > MAX_PROJECT_NAME or any(c in clean for c in "/\\\n\r\t"):
        raise InvalidInput(
            f"project name {name!r} must have 1 to {MAX_PROJECT_NAME} characters and no "
            "slashes, tabs or line breaks"
        )
    return clean


def _description(text: str | None) -> str:
    return check_text(text, "description", MAX_DESCRIPTION) if (text or "").strip() else ""


def create_project(engine: Engine, name: str, description: str = "") -> Project:
    """Create an empty project; Conflict when the name is taken."""
    name = check_project_name(name)
    now = utcnow()
    with engine.begin() as conn:
        if conn.execute(select(P.c.id).where(P.c.name == name)).first():
            raise Conflict(f"a project named {name!r} already exists")
        pid = new_id()
        conn.execute(
            P.insert().values(
                id=pid,
                name=name,
                description=_description(description),
                created_at=now,
                updated_at=now,
            )
        )
    return get_project(engine, pid)


def list_projects(engine: Engine) -> list[Project]:
    """Every project, oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(select(P).order_by(P.c.created_at, P.c.id)).all()
    return [_project(r) for r in rows]


def get_project(engine: Engine, ref: str) -> Project:
    """A project by id or by name; NotFound lists the names that exist."""
    with engine.connect() as conn:
        row = conn.execute(select(P).where(P.c.id == ref)).first()
        row = row or conn.execute(select(P).where(P.c.name == ref)).first()
    if row is None:
        names = ", ".join(repr(p.name) for p in list_projects(engine)) or "none"
        raise NotFound(f"no memory project {ref!r}; projects: {names}")
    return _project(row)


def update_project(
    engine: Engine, ref: str, name: str | None = None, description: str | None = None
) -> Project:
    """Rename a project or change its description."""
    project = get_project(engine, ref)
    values: dict[str, Any] = {"updated_at": utcnow()}
    if name is not None:
        values["name"] = check_project_name(name)
        with engine.connect() as conn:
            other = conn.execute(select(P.c.id).where(P.c.name == values["name"])).first()
        if other and other.id != project.id:
            raise Conflict(f"a project named {values['name']!r} already exists")
    if description is not None:
        values["description"] = _description(description)
    with engine.begin() as conn:
        conn.execute(P.update().where(P.c.id == project.id).values(**values))
    return get_project(engine, project.id)


def delete_project(engine: Engine, ref: str) -> Project:
    """Delete a project with its entries, suggestions and story text."""
    project = get_project(engine, ref)
    with engine.begin() as conn:
        for table in (db.memory_entries, db.memory_suggestions, db.story_passages):
            conn.execute(table.delete().where(table.c.project_id == project.id))
        conn.execute(P.delete().where(P.c.id == project.id))
    return project

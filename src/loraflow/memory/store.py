"""Memory entries in the database, with every version kept when a fact changes."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, func, select

from loraflow import db
from loraflow.errors import Conflict, InvalidInput, NotFound
from loraflow.memory.entries import EntryFields, MemoryEntry, check_kind
from loraflow.memory.projects import Project, iso, new_id, utcnow

E = db.memory_entries


def _entry(row: Any) -> MemoryEntry:
    return MemoryEntry(
        id=row.id,
        entry_id=row.entry_id,
        project_id=row.project_id,
        version=row.version,
        current=bool(row.current),
        kind=row.kind,
        title=row.title,
        content=row.content,
        keywords=list(row.keywords or []),
        importance=row.importance,
        always_on=bool(row.always_on),
        chapter=row.chapter,
        position=row.position,
        note=row.note,
        created_at=iso(row.created_at),
        updated_at=iso(row.updated_at),
    )


# --- entries ------------------------------------------------------------------------
def count_entries(engine: Engine, project_id: str) -> int:
    """How many current entries (not old versions) a project holds."""
    with engine.connect() as conn:
        q = select(func.count()).where(E.c.project_id == project_id, E.c.current.is_(True))
        return int(conn.execute(q).scalar_one())


def check_room(engine: Engine, project: Project, adding: int, limit: int) -> None:
    """Conflict when `adding` more entries would pass MAX_MEMORY_ITEMS."""
    have = count_entries(engine, project.id)
    if have + adding > limit:
        raise Conflict(
            f"project {project.name!r} holds {have} memory entries; adding {adding} would pass "
            f"the limit of {limit} (MAX_MEMORY_ITEMS)",
            hint="delete entries you no longer need, or raise MAX_MEMORY_ITEMS",
        )


def _row_values(fields: EntryFields) -> dict[str, Any]:
    return {
        "kind": fields.kind,
        "title": fields.title,
        "content": fields.content,
        "keywords": list(fields.keywords),
        "importance": fields.importance,
        "always_on": fields.always_on,
        "chapter": fields.chapter,
        "position": fields.position,
    }


def add_entries(
    engine: Engine,
    project: Project,
    items: list[EntryFields],
    limit: int,
    histories: list[list[EntryFields]] | None = None,
) -> list[MemoryEntry]:
    """Add new entries, all or none, within the per-project limit.

    `histories[i]` holds earlier versions of item i (oldest first), stored as superseded.
    """
    for item in items:
        item.validate()
    now = utcnow()
    rows = []
    for i, item in enumerate(items):
        entry_id = new_id()
        older = histories[i] if histories else []
        for version, fields in enumerate([*older, item], start=1):
            rows.append(
                {
                    "id": new_id(),
                    "entry_id": entry_id,
                    "project_id": project.id,
                    "version": version,
                    "current": version == len(older) + 1,
                    "note": None,
                    "created_at": now,
                    "updated_at": now,
                    **_row_values(fields.validate()),
                }
            )
    with engine.begin() as conn:
        check_room(engine, project, len(items), limit)
        if rows:
            conn.execute(E.insert(), rows)
    return [get_entry(engine, project.id, r["entry_id"]) for r in rows if r["current"]]


def list_entries(
    engine: Engine, project_id: str, kind: str | None = None, history: bool = False
) -> list[MemoryEntry]:
    """Current entries (with `history`, every version), oldest first."""
    q = select(E).where(E.c.project_id == project_id)
    if kind is not None:
        q = q.where(E.c.kind == check_kind(kind))
    if not history:
        q = q.where(E.c.current.is_(True))
    with engine.connect() as conn:
        rows = conn.execute(q.order_by(E.c.created_at, E.c.entry_id, E.c.version)).all()
    return [_entry(r) for r in rows]


def get_entry(engine: Engine, project_id: str, entry_id: str) -> MemoryEntry:
    """The current version of an entry."""
    with engine.connect() as conn:
        row = conn.execute(
            select(E).where(
                E.c.project_id == project_id, E.c.entry_id == entry_id, E.c.current.is_(True)
            )
        ).first()
    if row is None:
        raise NotFound(f"no memory entry {entry_id!r} in this project")
    return _entry(row)


def entry_history(engine: Engine, project_id: str, entry_id: str) -> list[MemoryEntry]:
    """Every version of an entry, oldest first."""
    get_entry(engine, project_id, entry_id)
    with engine.connect() as conn:
        rows = conn.execute(
            select(E)
            .where(E.c.project_id == project_id, E.c.entry_id == entry_id)
            .order_by(E.c.version)
        ).all()
    return [_entry(r) for r in rows]


def update_entry(engine: Engine, project_id: str, entry_id: str, changes: dict) -> MemoryEntry:
    """Correct the current version in place (a typo, not a change in the story)."""
    entry = get_entry(engine, project_id, entry_id)
    fields = _apply(entry.fields(), changes).validate()
    with engine.begin() as conn:
        conn.execute(
            E.update().where(E.c.id == entry.id).values(updated_at=utcnow(), **_row_values(fields))
        )
    return get_entry(engine, project_id, entry_id)


def supersede_entry(
    engine: Engine, project_id: str, entry_id: str, changes: dict, note: str | None = None
) -> MemoryEntry:
    """Record that a fact changed: a new current version; the old one stays as history."""
    entry = get_entry(engine, project_id, entry_id)
    fields = _apply(entry.fields(), changes).validate()
    now = utcnow()
    with engine.begin() as conn:
        done = conn.execute(
            E.update().where(E.c.id == entry.id, E.c.current.is_(True)).values(current=False)
        ).rowcount
        if not done:
            raise Conflict(f"entry {entry_id!r} was changed meanwhile; reload and retry")
        conn.execute(
            E.insert().values(
                id=new_id(),
                entry_id=entry.entry_id,
                project_id=project_id,
                version=entry.version + 1,
                current=True,
                note=note,
                created_at=now,
                updated_at=now,
                **_row_values(fields),
            )
        )
    return get_entry(engine, project_id, entry_id)


def delete_entry(engine: Engine, project_id: str, entry_id: str) -> MemoryEntry:
    """Delete an entry and all its versions."""
    entry = get_entry(engine, project_id, entry_id)
    with engine.begin() as conn:
        conn.execute(E.delete().where(E.c.project_id == project_id, E.c.entry_id == entry_id))
    return entry


def _apply(fields: EntryFields, changes: dict) -> EntryFields:
    allowed = set(EntryFields.__dataclass_fields__)
    unknown = set(changes) - allowed
    if unknown:
        raise InvalidInput(f"unknown entry fields {sorted(unknown)}; allowed: {sorted(allowed)}")
    for key, value in changes.items():
        setattr(fields, key, value)
    return fields

"""The story text of a project: written passages in order, shared by every client."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, select

from loraflow import db

S = db.story_passages


@dataclass
class Passage:
    """One written piece: the writer's prompt (may be empty) and the generated text."""

    id: int
    project_id: str
    prompt: str
    text: str
    meta: dict[str, Any]
    created_at: str


def add_passage(
    engine: Engine, project_id: str, prompt: str, text: str, meta: dict[str, Any]
) -> int:
    """Append a passage; returns its id."""
    with engine.begin() as conn:
        result = conn.execute(
            S.insert().values(
                project_id=project_id,
                prompt=prompt,
                text=text,
                meta=meta,
                created_at=datetime.now(UTC),
            )
        )
        return int(result.inserted_primary_key[0])


def passages(engine: Engine, project_id: str, limit: int | None = None) -> list[Passage]:
    """The project's passages, oldest first (the last `limit` when given)."""
    q = select(S).where(S.c.project_id == project_id).order_by(S.c.id.desc())
    if limit is not None:
        q = q.limit(limit)
    with engine.connect() as conn:
        rows = conn.execute(q).all()
    return [
        Passage(r.id, r.project_id, r.prompt, r.text, dict(r.meta or {}), str(r.created_at))
        for r in reversed(rows)
    ]


def story_text(items: list[Passage]) -> str:
    """The story as one text: each passage's prompt followed by its generated text."""
    return "".join(p.prompt + p.text for p in items)


def story_tail(engine: Engine, project_id: str, chars: int) -> str:
    """The last `chars` characters of the story so far."""
    out = ""
    # Newest passages first until enough text is gathered; old ones are never read.
    offset, batch = 0, 20
    while len(out) < chars:
        q = (
            select(S.c.prompt, S.c.text)
            .where(S.c.project_id == project_id)
            .order_by(S.c.id.desc())
            .offset(offset)
            .limit(batch)
        )
        with engine.connect() as conn:
            rows = conn.execute(q).all()
        if not rows:
            break
        out = "".join(r.prompt + r.text for r in reversed(rows)) + out
        offset += batch
    return out[-chars:]


def clear_story(engine: Engine, project_id: str) -> int:
    """Delete every passage of a project; returns how many."""
    with engine.begin() as conn:
        return int(conn.execute(S.delete().where(S.c.project_id == project_id)).rowcount)

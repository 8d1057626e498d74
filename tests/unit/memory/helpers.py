"""Build memory entries for tests without a database."""

from __future__ import annotations

from loraflow.memory.entries import MemoryEntry


def entry(
    title: str,
    content: str = "",
    *,
    kind: str = "character",
    keywords: list[str] | None = None,
    importance: int = 5,
    always_on: bool = False,
    chapter: int | None = None,
    current: bool = True,
    entry_id: str | None = None,
    version: int = 1,
    created_at: str = "2026-01-01T00:00:00",
) -> MemoryEntry:
    """A MemoryEntry with sensible defaults; the id is derived from the title."""
    eid = entry_id or f"e-{title}"
    return MemoryEntry(
        id=f"{eid}-v{version}",
        entry_id=eid,
        project_id="p",
        version=version,
        current=current,
        kind=kind,
        title=title,
        content=content or f"{title} is part of the story.",
        keywords=list(keywords or []),
        importance=importance,
        always_on=always_on,
        chapter=chapter,
        position=None,
        note=None,
        created_at=created_at,
        updated_at=created_at,
    )

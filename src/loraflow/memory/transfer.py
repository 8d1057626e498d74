"""A project's memory as one JSON document, for backup and moving between instances."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from loraflow.errors import InvalidInput
from loraflow.memory.entries import EntryFields, MemoryEntry
from loraflow.memory.projects import Project

FORMAT = "loraflow.memory"
FORMAT_VERSION = 1


def export_document(
    project: Project, entries: list[MemoryEntry], history: list[MemoryEntry]
) -> dict[str, Any]:
    """Current entries plus, per entry, its superseded versions (oldest first)."""
    older: dict[str, list[dict[str, Any]]] = {}
    for h in history:
        if not h.current:
            older.setdefault(h.entry_id, []).append(
                {**asdict(h.fields()), "version": h.version, "created_at": h.created_at}
            )
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "project": {"name": project.name, "description": project.description},
        "entries": [
            {
                **asdict(e.fields()),
                "version": e.version,
                "note": e.note,
                "history": older.get(e.entry_id, []),
            }
            for e in entries
        ],
    }


def _fields(item: Any, where: str) -> EntryFields:
    if not isinstance(item, dict):
        raise InvalidInput(f"{where} is {type(item).__name__}, not an object")
    allowed = set(EntryFields.__dataclass_fields__)
    try:
        return EntryFields(**{k: v for k, v in item.items() if k in allowed}).validate()
    except TypeError as exc:
        raise InvalidInput(f"{where} lacks a field: {exc}") from exc
    except InvalidInput as exc:
        raise InvalidInput(f"{where}: {exc.message}") from exc


def parse_document(
    doc: Any,
) -> tuple[dict[str, str], list[EntryFields], list[list[EntryFields]]]:
    """Project info, validated current entries and each entry's earlier versions."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InvalidInput(f"not a loraflow memory export: 'format' must be {FORMAT!r}")
    version = doc.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise InvalidInput(
            f"export version {version!r}; this loraflow reads up to {FORMAT_VERSION}"
        )
    project = doc.get("project") or {}
    raw = doc.get("entries")
    if not isinstance(project, dict) or not isinstance(raw, list):
        raise InvalidInput("an export needs a 'project' object and an 'entries' list")
    items: list[EntryFields] = []
    histories: list[list[EntryFields]] = []
    for i, item in enumerate(raw):
        items.append(_fields(item, f"entries[{i}]"))
        older = item.get("history") or []
        if not isinstance(older, list):
            raise InvalidInput(f"entries[{i}].history must be a list")
        histories.append([_fields(h, f"entries[{i}].history[{j}]") for j, h in enumerate(older)])
    info = {
        "name": str(project.get("name") or ""),
        "description": str(project.get("description") or ""),
    }
    return info, items, histories

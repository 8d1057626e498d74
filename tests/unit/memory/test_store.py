"""Projects and entries in a real SQLite database: limit, supersede with history, export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from loraflow import db
from loraflow.errors import Conflict, InvalidInput, NotFound
from loraflow.memory import inbox, projects, store, transfer
from loraflow.memory.entries import EntryFields
from loraflow.memory.story import add_passage, story_tail
from loraflow.memory.suggestions import Suggestion


@pytest.fixture()
def engine(tmp_path: Path) -> Engine:
    return db.make_engine(f"sqlite:///{tmp_path / 'm.db'}")


def fields(title: str, keywords: list[str] | None = None, chapter: int | None = None) -> Any:
    return EntryFields("character", title, f"{title}.", keywords or [], chapter=chapter)


def test_projects_by_id_or_name_and_unique_names(engine: Engine) -> None:
    p = projects.create_project(engine, "长夜", "a story")
    assert projects.get_project(engine, "长夜").id == p.id == projects.get_project(engine, p.id).id
    with pytest.raises(Conflict, match="'长夜' already exists"):
        projects.create_project(engine, " 长夜 ")
    with pytest.raises(InvalidInput):
        projects.create_project(engine, "a/b")
    with pytest.raises(NotFound, match="projects: '长夜'"):
        projects.get_project(engine, "nope")


def test_limit_is_enforced_with_a_clear_error(engine: Engine) -> None:
    p = projects.create_project(engine, "small")
    store.add_entries(engine, p, [fields("A"), fields("B")], limit=3)
    with pytest.raises(
        Conflict, match="holds 2 memory entries; adding 2 would pass the limit of 3"
    ):
        store.add_entries(engine, p, [fields("C"), fields("D")], limit=3)
    assert store.count_entries(engine, p.id) == 2  # all or nothing
    store.add_entries(engine, p, [fields("C")], limit=3)


def test_supersede_keeps_history_and_one_current_version(engine: Engine) -> None:
    p = projects.create_project(engine, "s")
    (bob,) = store.add_entries(engine, p, [fields("Bob", keywords=["Bob"])], limit=10)
    new = store.supersede_entry(
        engine, p.id, bob.entry_id, {"content": "Bob died in the fire."}, "chapter 3"
    )
    assert (new.version, new.current, new.note, new.keywords) == (2, True, "chapter 3", ["Bob"])
    history = store.entry_history(engine, p.id, bob.entry_id)
    assert [(h.version, h.current, h.content) for h in history] == [
        (1, False, "Bob."),
        (2, True, "Bob died in the fire."),
    ]
    assert [e.content for e in store.list_entries(engine, p.id)] == ["Bob died in the fire."]
    # A superseded fact does not count against the limit.
    assert store.count_entries(engine, p.id) == 1


def test_update_in_place_and_delete(engine: Engine) -> None:
    p = projects.create_project(engine, "u")
    (e,) = store.add_entries(engine, p, [fields("Anna")], limit=10)
    changed = store.update_entry(engine, p.id, e.entry_id, {"importance": 9})
    assert (changed.version, changed.importance) == (1, 9)
    with pytest.raises(InvalidInput, match="unknown entry fields"):
        store.update_entry(engine, p.id, e.entry_id, {"colour": "red"})
    store.delete_entry(engine, p.id, e.entry_id)
    with pytest.raises(NotFound):
        store.get_entry(engine, p.id, e.entry_id)


def test_export_then_parse_round_trips_current_entries(engine: Engine) -> None:
    p = projects.create_project(engine, "x", "desc")
    (e,) = store.add_entries(engine, p, [fields("王雪", keywords=["王雪"], chapter=2)], limit=9)
    store.supersede_entry(engine, p.id, e.entry_id, {"content": "王雪去世了。"})
    doc = transfer.export_document(
        p, store.list_entries(engine, p.id), store.list_entries(engine, p.id, history=True)
    )
    assert doc["entries"][0]["history"][0]["content"] == "王雪."
    info, items, histories = transfer.parse_document(doc)
    assert info == {"name": "x", "description": "desc"}
    assert [(i.title, i.content, i.chapter) for i in items] == [("王雪", "王雪去世了。", 2)]
    copy = projects.create_project(engine, "copy")
    (imported,) = store.add_entries(engine, copy, items, 9, histories)
    versions = store.entry_history(engine, copy.id, imported.entry_id)
    assert [(v.version, v.current, v.content) for v in versions] == [
        (1, False, "王雪."),
        (2, True, "王雪去世了。"),
    ]
    with pytest.raises(InvalidInput, match="entries\\[0\\]"):
        transfer.parse_document({**doc, "entries": [{"kind": "x", "title": "t", "content": "c"}]})


def test_story_tail_and_suggestion_decisions(engine: Engine) -> None:
    p = projects.create_project(engine, "t")
    for i in range(30):
        add_passage(engine, p.id, "", f"[{i}]", {})
    assert story_tail(engine, p.id, 8) == "[28][29]"
    saved = inbox.save_suggestions(engine, p.id, [Suggestion("character", "李明", "李明说。")])
    again = inbox.save_suggestions(engine, p.id, [Suggestion("character", "李明", "李明说。")])
    assert len(saved) == 1 and again == []
    inbox.decide(engine, p.id, saved[0].id, "rejected")
    with pytest.raises(Conflict, match="already rejected"):
        inbox.decide(engine, p.id, saved[0].id, "accepted")

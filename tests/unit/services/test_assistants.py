"""Assistant records: validation, CRUD, what they do to a request, and collection deletes."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraflow.errors import Conflict, InvalidInput, NotFound
from loraflow.services.catalog import assistants
from loraflow.services.know import ask, knowledge
from loraflow.services.know.ask import AskRequest
from loraflow.services.runtime import Runtime

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rt(base_rt: Runtime, tmp_path_factory: pytest.TempPathFactory) -> Runtime:
    folder = tmp_path_factory.mktemp("handbook")
    (folder / "leave.txt").write_text("Staff get 25 days of paid leave per year.", "utf-8")
    knowledge.create_collection(base_rt, "handbook")
    knowledge.ingest(base_rt, "handbook", [folder])
    return base_rt


def test_create_show_update_delete(rt: Runtime) -> None:
    a = assistants.create_assistant(
        rt,
        {
            "name": "hr",
            "system_prompt": "You answer HR questions.",
            "collections": ["handbook"],
            "generation": {"temperature": 0.0, "max_new_tokens": 40},
            "retrieval": {"top_k": 2, "mode": "bm25"},
        },
    )
    assert (a.engine, a.adapter, a.collections) == ("local", None, ["handbook"])
    assert [x.name for x in assistants.list_assistants(rt)] == ["hr"]
    b = assistants.update_assistant(rt, "hr", {"description": "people team"})
    assert b.description == "people team" and b.system_prompt == "You answer HR questions."
    c = assistants.update_assistant(rt, "hr", {"retrieval": {"top_k": 4}, "generation": {}})
    assert (c.retrieval, c.generation, c.description) == ({"top_k": 4}, {}, "people team")
    with pytest.raises(Conflict, match="'hr' already exists"):
        assistants.create_assistant(rt, {"name": "hr"})
    assistants.create_assistant(rt, {"name": "tmp"})
    assistants.delete_assistant(rt, "tmp")
    with pytest.raises(NotFound, match="known assistants: 'hr'"):
        assistants.get_assistant(rt, "tmp")


def test_bad_bindings_are_refused_with_the_allowed_values(rt: Runtime) -> None:
    with pytest.raises(NotFound, match="known collections: 'default'"):
        assistants.create_assistant(rt, {"name": "x", "collections": ["nowhere"]})
    with pytest.raises(NotFound, match="unknown adapter 'ghost'"):
        assistants.create_assistant(rt, {"name": "x", "adapter": "ghost"})
    with pytest.raises(InvalidInput, match="'gpu'"):
        assistants.create_assistant(rt, {"name": "x", "engine": "gpu"})
    with pytest.raises(InvalidInput, match="temperature"):
        assistants.create_assistant(rt, {"name": "x", "generation": {"temperature": -1}})
    with pytest.raises(InvalidInput, match="not allowed"):
        assistants.create_assistant(rt, {"name": "../etc"})
    with pytest.raises(InvalidInput, match="'bogus'"):
        assistants.create_assistant(rt, {"name": "x", "bogus": 1})
    assert "x" not in [a.name for a in assistants.list_assistants(rt)]


def test_renaming_onto_a_taken_name_is_refused_and_changes_nothing(rt: Runtime) -> None:
    assistants.create_assistant(rt, {"name": "first", "system_prompt": "one"})
    assistants.create_assistant(rt, {"name": "second", "system_prompt": "two"})
    with pytest.raises(Conflict, match="'first' already exists"):
        assistants.update_assistant(rt, "second", {"name": "first"})
    assert assistants.get_assistant(rt, "first").system_prompt == "one"
    assert assistants.get_assistant(rt, "second").system_prompt == "two"
    assistants.delete_assistant(rt, "first"), assistants.delete_assistant(rt, "second")


def test_an_assistant_fills_what_the_request_leaves_unset(rt: Runtime) -> None:
    assistants.create_assistant(
        rt,
        {
            "name": "terse",
            "system_prompt": "Be terse.",
            "engine": "ollama",
            "collections": ["handbook"],
            "generation": {"temperature": 0.2, "stop": ["END"]},
        },
    )
    req = ask.apply_assistant(rt, AskRequest(query="q", assistant="terse", top_p=0.5))
    assert (req.engine, req.system_prompt, req.collections) == ("ollama", "Be terse.", ["handbook"])
    assert (req.temperature, req.top_p, req.stop) == (0.2, 0.5, ["END"])
    own = ask.apply_assistant(
        rt, AskRequest(query="q", assistant="terse", temperature=0.9, use_lora=True)
    )
    assert own.temperature == 0.9 and own.engine is None  # the request's choice wins


def test_deleting_a_collection_in_use_needs_force_and_tells_the_assistant(
    rt: Runtime, tmp_path: Path
) -> None:
    knowledge.create_collection(rt, "old-faq")
    assistants.create_assistant(rt, {"name": "faq", "collections": ["old-faq", "handbook"]})
    knowledge.rename_collection(rt, "old-faq", "faq-kb")
    assert assistants.get_assistant(rt, "faq").collections == ["faq-kb", "handbook"]
    with pytest.raises(Conflict, match="used by assistant\\(s\\) 'faq'"):
        knowledge.delete_collection(rt, "faq-kb")
    out = knowledge.delete_collection(rt, "faq-kb", force=True)
    assert out["detached_assistants"] == ["faq"]
    a = assistants.get_assistant(rt, "faq")
    assert a.collections == ["handbook"]
    assert a.retrieval["notices"] == ["collection 'faq-kb' was deleted"]
    # Saving the assistant again, with retrieval settings or without, clears the notice.
    b = assistants.update_assistant(rt, "faq", {"retrieval": {"mode": "vector"}})
    assert b.retrieval == {"mode": "vector"}

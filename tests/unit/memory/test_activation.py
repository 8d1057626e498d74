"""Activation: documented order, budget dropping, superseded versions never injected."""

from __future__ import annotations

from loraflow.memory.activation import activate
from loraflow.memory.render import memory_block
from tests.unit.memory.helpers import entry


def count_chars(text: str) -> int:
    return len(text)


def test_order_is_always_on_then_keyword_then_semantic_then_importance() -> None:
    entries = [
        entry("Sea", "The sea is cold.", kind="world", keywords=["harbour"]),
        entry("Rules", "Magic costs memories.", kind="world", always_on=True, importance=2),
        entry("Mara", "A smuggler.", keywords=["Mara"], importance=9),
        entry("Tobias", "A fisherman.", keywords=["Tobias"], importance=3),
        entry("Oath", "Mara swore to return.", kind="plot_event", keywords=["oath"]),
        entry("Unrelated", "Never triggered.", keywords=["zzz"]),
    ]
    text = "Tobias waited in the harbour until Mara came."
    act = activate(entries, text, {"e-Oath": 0.8}, 10_000, count_chars)
    assert [c.entry.title for c in act.used] == ["Rules", "Mara", "Sea", "Tobias", "Oath"]
    assert [c.reason for c in act.used] == [
        "always_on",
        "keyword",
        "keyword",
        "keyword",
        "semantic",
    ]
    assert act.used[1].matched == ["Mara"] and act.dropped == []


def test_same_inputs_give_the_same_order_whatever_the_list_order() -> None:
    a = entry("A", keywords=["x"], chapter=2)
    b = entry("B", keywords=["x"], chapter=1)
    c = entry("C", keywords=["x"], chapter=None)
    first = activate([a, b, c], "x", {}, 1000, count_chars)
    second = activate([c, a, b], "x", {}, 1000, count_chars)
    assert [x.entry.title for x in first.used] == ["B", "A", "C"]
    assert [x.entry.title for x in second.used] == ["B", "A", "C"]


def test_entries_over_the_budget_are_reported_dropped() -> None:
    big = entry("Big", "x" * 300, keywords=["k"], importance=8)
    small = entry("Small", "tiny", keywords=["k"], importance=1)
    always = entry("Rule", "short rule", always_on=True)
    act = activate([big, small, always], "k", {}, 80, count_chars)
    assert [c.entry.title for c in act.used] == ["Rule", "Small"]
    assert [c.entry.title for c in act.dropped] == ["Big"]
    assert act.tokens_used == sum(c.tokens for c in act.used) <= 80


def test_zero_budget_drops_everything() -> None:
    act = activate([entry("A", always_on=True)], "", {}, 0, count_chars)
    assert act.used == [] and [c.entry.title for c in act.dropped] == ["A"]


def test_only_the_current_version_of_a_superseded_fact_is_used() -> None:
    old = entry("Bob", "Bob is alive.", keywords=["Bob"], current=False, version=1)
    new = entry("Bob", "Bob died in the fire.", keywords=["Bob"], version=2)
    act = activate([old, new], "Bob", {}, 1000, count_chars)
    assert [c.entry.content for c in act.used] == ["Bob died in the fire."]


def test_title_triggers_when_there_are_no_keywords() -> None:
    act = activate([entry("李明", "剑客。")], "李明拔出了剑。", {}, 1000, count_chars)
    assert [c.entry.title for c in act.used] == ["李明"]


def test_memory_block_follows_the_story_language() -> None:
    e = entry("李明", "一名剑客。")
    assert (
        memory_block([e], "zh")
        == "故事记忆（续写时须保持一致的设定）：\n- 【人物】李明：一名剑客。"
    )
    assert memory_block([e], "en").endswith("- [Character] 李明: 一名剑客。")
    assert memory_block([], "en") == ""

"""Continuity flags for dead characters acting, changed relations, places and old names."""

from __future__ import annotations

from loraflow.memory.continuity import check
from tests.unit.memory.helpers import entry


def test_dead_character_who_speaks_is_flagged_but_a_memory_of_him_is_not() -> None:
    memory = [entry("Bob", "Bob died in the fire in chapter 3.", keywords=["Bob"])]
    flags = check("Bob smiled and said hello. Alice remembered how Bob said goodbye.", memory)
    assert [(f.rule, f.sentence) for f in flags] == [
        ("dead_character_acts", "Bob smiled and said hello.")
    ]
    assert "Bob is dead in memory" in flags[0].message


def test_death_recorded_in_a_plot_event_names_the_character() -> None:
    memory = [
        entry("李明", "一名剑客。"),
        entry("决战", "李明在决战中身亡。", kind="plot_event"),
    ]
    flags = check("李明笑着说：“我回来了。”", memory)
    assert [f.rule for f in flags] == ["dead_character_acts"]
    assert flags[0].message.startswith("记忆中李明已经死亡")


def test_relations_and_places_in_chinese_give_chinese_notes() -> None:
    memory = [entry("李明", "剑客。"), entry("王雪", "王雪是李明的妹妹。王雪住在长安。")]
    flags = check("王雪是李明的妻子。王雪住在洛阳。", memory)
    assert [f.rule for f in flags] == ["relation_changed", "place_changed"]
    assert flags[0].message == "记忆中王雪是李明的妹妹，这里却写成妻子"
    assert flags[1].message == "记忆中王雪住在长安，这里却是洛阳"
    assert check("王雪是李明的妹妹。王雪住在长安。", memory) == []


def test_english_relation_and_outdated_name() -> None:
    old = entry("Anna", "The heroine.", entry_id="h", version=1, current=False)
    new = entry("Hanna", "The heroine.", entry_id="h", version=2)
    memory = [entry("Bob", "A smith."), entry("Alice", "Alice is Bob's sister."), new]
    flags = check("Alice is Bob's wife. Anna waved.", memory, [old, new])
    assert [f.rule for f in flags] == ["relation_changed", "outdated_name"]
    assert flags[1].message == "'Anna' was superseded by 'Hanna'"

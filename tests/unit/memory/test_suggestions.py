"""Suggestions come from the text itself, so Chinese text gives Chinese suggestions."""

from __future__ import annotations

from loraflow.memory.language import has_cjk
from loraflow.memory.suggestions import suggest
from tests.unit.memory.helpers import entry


def test_chinese_names_and_dialogue_stay_chinese() -> None:
    text = "李明说：“我们今晚必须离开这座城。”张小红点头。她名叫王雪，来自北方。"
    found = suggest(text, [])
    chars = {s.title: s for s in found if s.kind == "character"}
    assert set(chars) == {"李明", "张小红", "王雪"}
    assert chars["王雪"].content == "她名叫王雪，来自北方。"
    dialogue = [s for s in found if s.kind == "dialogue"]
    assert dialogue[0].content == "李明：「我们今晚必须离开这座城。」"
    for s in found:
        assert s.language == "zh" and has_cjk(s.title) and has_cjk(s.content)


def test_english_names_need_a_speech_verb_or_two_mentions() -> None:
    text = (
        'The storm rose. "We must leave the harbour tonight," said Mara. '
        "Mara looked at Tobias. Later the Lighthouse went dark."
    )
    found = suggest(text, [entry("Tobias")])
    titles = [s.title for s in found]
    assert "Mara" in titles and "Tobias" not in titles  # known already
    assert "Lighthouse" not in titles and "The" not in titles and "Later" not in titles
    quote = next(s for s in found if s.kind == "dialogue")
    assert quote.content == 'Mara: "We must leave the harbour tonight"'
    assert all(s.language == "en" for s in found)


def test_nothing_to_suggest_in_plain_text() -> None:
    assert suggest("it rained all day and nobody came.", []) == []

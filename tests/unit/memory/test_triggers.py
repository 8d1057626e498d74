"""Keyword triggers: whole words in English, substrings in Chinese, /regex/ patterns."""

from __future__ import annotations

import pytest

from loraflow.errors import InvalidInput
from loraflow.memory.entries import EntryFields, check_keywords
from loraflow.memory.triggers import keyword_hits


def test_chinese_keywords_match_inside_text_without_spaces() -> None:
    text = "夜深了，李明推开门，看见王雪坐在灯下。"
    assert keyword_hits(["李明", "王雪", "张三"], text) == ["李明", "王雪"]


def test_english_keywords_match_whole_words_case_insensitively() -> None:
    text = "The ALICE of the harbour met Alicent at dawn."
    assert keyword_hits(["alice"], text) == ["alice"]
    assert keyword_hits(["Alic"], text) == []


def test_latin_name_inside_chinese_text_still_matches() -> None:
    assert keyword_hits(["Alice"], "Alice说：“走吧。”") == ["Alice"]


def test_regex_keywords() -> None:
    assert keyword_hits(["/dragon(s)?/"], "Two Dragons circled.") == ["/dragon(s)?/"]
    assert keyword_hits(["/第[一二三]章/"], "第二章开始了") == ["/第[一二三]章/"]


def test_bad_keywords_are_rejected_with_the_value() -> None:
    with pytest.raises(InvalidInput, match="'/\\(/'"):
        check_keywords(["/(/"])
    with pytest.raises(InvalidInput, match="empty"):
        check_keywords(["ok", "  "])
    assert check_keywords([" a ", "a", "b"]) == ["a", "b"]


def test_entry_fields_are_validated() -> None:
    with pytest.raises(InvalidInput, match="kind 'monster' is not one of"):
        EntryFields("monster", "x", "y").validate()
    with pytest.raises(InvalidInput, match="importance=11"):
        EntryFields("note", "x", "y", importance=11).validate()
    assert EntryFields("setting", " Town ", "A port.").validate().kind == "world"
    for bad in (
        EntryFields("note", 123, "y"),  # type: ignore[arg-type]
        EntryFields("note", "x", "y", always_on=None),  # type: ignore[arg-type]
        EntryFields("note", "x", "y", chapter=10**30),
        EntryFields("note", "x", "bad \ud800 text"),
    ):
        with pytest.raises(InvalidInput):
            bad.validate()

"""Bounded JSON reading: limits refused by name and place, never a RecursionError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loraflow.datasets.records import read_records
from loraflow.errors import InvalidInput, TooLarge, UnsupportedFile
from loraflow.rag.loaders import load_document
from loraflow.safe_json import JsonLimits, loads

DEEP = "[" * 100_000 + "]" * 100_000


def test_ordinary_json_reads_as_json_loads_does() -> None:
    text = '{"a": [1, 2.5, "x,[]{}\\"", null, true], "b": {"c": "\\u00e9\\ud83d\\ude00"}}'
    assert loads(text) == json.loads(text)
    assert loads(text.encode()) == json.loads(text)


@pytest.mark.parametrize("doc", [DEEP, '{"a":' * 5000 + "1" + "}" * 5000])
def test_deep_nesting_is_refused_with_the_limit_and_place(doc: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        loads(doc, where="'x.json'")
    message = caught.value.message
    assert message.startswith("'x.json': ")
    assert "deeper than the limit of 64 levels (JSON_MAX_DEPTH)" in message
    assert "line 1, column " in message


def test_depth_counts_brackets_outside_strings_only() -> None:
    inside = json.dumps({"text": "[" * 500})
    assert loads(inside) == {"text": "[" * 500}
    limits = JsonLimits(max_depth=3)
    assert loads("[[[1]]]", limits) == [[[1]]]
    with pytest.raises(InvalidInput, match="limit of 3 levels"):
        loads('[[[["a"]]]]', limits)


def test_depth_error_names_the_line() -> None:
    doc = '{\n  "a": 1,\n  "b": [[[[0]]]]\n}'
    with pytest.raises(InvalidInput, match="line 3, column 11"):
        loads(doc, JsonLimits(max_depth=4))


def test_element_count_and_size_limits() -> None:
    with pytest.raises(TooLarge, match=r"over the limit of 100 \(JSON_MAX_ITEMS\)"):
        loads(json.dumps(list(range(200))), JsonLimits(max_items=100))
    # Commas inside strings are not elements.
    assert loads(json.dumps(["," * 500]), JsonLimits(max_items=5)) == ["," * 500]
    with pytest.raises(TooLarge, match=r"over the limit of 10 \(MAX_BODY_MB\)"):
        loads('{"text": "0123456789"}', JsonLimits(max_bytes=10))


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ('{"t": NaN}', "NaN is not valid JSON"),
        ('{"t": -Infinity}', "-Infinity is not valid JSON"),
        ('{"t": 1e999}', "out of range for a float"),
        ('{"t": ' + "9" * 5000 + "}", "5000 digits is out of range"),
        ('{"t": "\\ud800"}', "lone UTF-16 surrogate"),
        ('["ok", "\\udfff x"]', "lone UTF-16 surrogate"),
    ],
)
def test_non_standard_values_are_refused(doc: str, expected: str) -> None:
    with pytest.raises(InvalidInput, match=expected):
        loads(doc)


def test_bom_and_utf16_bodies_are_read() -> None:
    assert loads(b'\xef\xbb\xbf{"a": 1}') == {"a": 1}
    assert loads('{"a": "\u00e9"}'.encode("utf-16")) == {"a": "\u00e9"}


def test_syntax_errors_stay_json_decode_errors() -> None:
    with pytest.raises(json.JSONDecodeError):
        loads('{"a": }')


def test_dataset_files_name_the_record_line(tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text(DEEP)
    with pytest.raises(InvalidInput, match="'deep.json': JSON is nested deeper"):
        read_records(deep)
    lines = tmp_path / "rows.jsonl"
    lines.write_text('{"instruction": "a", "output": "b"}\n{"instruction": ' + DEEP + "}\n")
    with pytest.raises(InvalidInput, match="'rows.jsonl' line 2: JSON is nested deeper"):
        read_records(lines)
    nan = tmp_path / "nan.jsonl"
    nan.write_text('{"instruction": "a", "output": NaN}\n')
    with pytest.raises(InvalidInput, match="'nan.jsonl' line 1: NaN"):
        read_records(nan)


def test_document_files_are_read_within_the_limits(tmp_path: Path) -> None:
    deep = tmp_path / "deep.jsonl"
    deep.write_text('{"text": "fine"}\n' + DEEP + "\n")
    with pytest.raises(InvalidInput, match="'deep.jsonl' line 2: JSON is nested deeper"):
        load_document(deep)
    many = tmp_path / "many.json"
    many.write_text(json.dumps(["word"] * 50))
    with pytest.raises(TooLarge, match="JSON_MAX_ITEMS"):
        load_document(many, limits=JsonLimits(max_items=10))
    broken = tmp_path / "broken.json"
    broken.write_text('{"text": ')
    with pytest.raises(UnsupportedFile, match="not valid JSON"):
        load_document(broken)

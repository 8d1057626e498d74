"""Dataset formats: each accepted shape parses, each bad file names its problem and place."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loraflow.datasets.formats import load_examples
from loraflow.errors import InvalidInput, UnsupportedFile


def write(tmp_path: Path, name: str, data: object) -> Path:
    path = tmp_path / name
    if isinstance(data, str):
        path.write_text(data, "utf-8")
    elif name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in data), "utf-8")
    else:
        path.write_text(json.dumps(data, ensure_ascii=False), "utf-8")
    return path


def test_alpaca_with_and_without_input(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "a.json",
        [
            {"instruction": "Translate", "input": "cat", "output": "猫"},
            {"instruction": "Say hi", "output": "Hi!"},
        ],
    )
    ex = load_examples(path, "alpaca")
    assert ex[0]["messages"] == [
        {"role": "user", "content": "Translate\n\ncat"},
        {"role": "assistant", "content": "猫"},
    ]
    assert ex[1]["messages"][0] == {"role": "user", "content": "Say hi"}


def test_sharegpt_roles_system_and_multi_turn(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "s.jsonl",
        [
            {
                "conversations": [
                    {"from": "system", "value": "Be brief."},
                    {"from": "human", "value": "Hi"},
                    {"from": "gpt", "value": "Hello"},
                    {"from": "human", "value": "Bye"},
                    {"from": "gpt", "value": "Bye!"},
                ]
            },
            {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]},
            {
                "system": "You are a poet.",
                "conversations": [
                    {"from": "user", "value": "Rain"},
                    {"from": "assistant", "value": "Drops"},
                ],
            },
        ],
    )
    ex = load_examples(path, "sharegpt")
    assert [m["role"] for m in ex[0]["messages"]] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    assert ex[1]["messages"][1] == {"role": "assistant", "content": "A"}
    assert ex[2]["messages"][0] == {"role": "system", "content": "You are a poet."}


def test_raw_novels_txt_json_jsonl_are_chunked(tmp_path: Path) -> None:
    story = "第一章。" + "他走进雾里，没有回头。" * 60
    txt = write(tmp_path, "n.txt", story)
    js = write(tmp_path, "n.json", [{"title": "T", "content": story, "author": "A", "tags": []}])
    jl = write(tmp_path, "n.jsonl", [{"title": "T", "content": story}])
    for path in (txt, js, jl):
        ex = load_examples(path, "raw", chunk_size=200)
        assert len(ex) > 1 and all(len(e["text"]) <= 200 for e in ex)
        # Chinese text breaks after sentence punctuation, not mid-sentence.
        assert all(e["text"].endswith("。") for e in ex[:-1])
        assert "".join(e["text"] for e in ex) == story


@pytest.mark.parametrize(
    ("name", "content", "kind", "expected"),
    [
        (
            "bad.json",
            '[{"instruction": "a", "output": "b"},\n {"instruction": }]',
            "alpaca",
            "line 2",
        ),
        ("bad.jsonl", '{"instruction": "a", "output": "b"}\n{oops}\n', "alpaca", "line 2"),
        ("empty.json", "   ", "alpaca", "is empty"),
        ("none.json", "[]", "alpaca", "no usable records"),
        ("missing.json", '[{"instruction": "a"}]', "alpaca", "missing field 'output'"),
        (
            "wrongtype.json",
            '[{"conversations": [{"from": "human", "value": "x"}]}]',
            "alpaca",
            "sharegpt",
        ),
        ("wrongtype2.json", '[{"instruction": "a", "output": "b"}]', "sharegpt", "alpaca"),
        (
            "speaker.json",
            '[{"conversations": [{"from": "bot", "value": "x"}]}]',
            "sharegpt",
            "'bot'",
        ),
        (
            "noanswer.json",
            '[{"conversations": [{"from": "human", "value": "x"}]}]',
            "sharegpt",
            "no 'gpt'",
        ),
        ("scalar.json", "[1, 2]", "alpaca", "record 1"),
        ("text.txt", "plain", "alpaca", "raw"),
    ],
)
def test_bad_files_say_what_and_where(
    tmp_path: Path, name: str, content: str, kind: str, expected: str
) -> None:
    path = write(tmp_path, name, content)
    with pytest.raises(InvalidInput) as info:
        load_examples(path, kind)
    assert expected in str(info.value)
    assert name in str(info.value) or kind in str(info.value)


def test_record_number_is_named(tmp_path: Path) -> None:
    rows = [{"instruction": "a", "output": "b"}] * 3 + [{"instruction": "a", "output": 5}]
    with pytest.raises(InvalidInput, match="record 4"):
        load_examples(write(tmp_path, "r.json", rows), "alpaca")


def test_unknown_type_and_suffix(tmp_path: Path) -> None:
    path = write(tmp_path, "a.json", [{"instruction": "a", "output": "b"}])
    with pytest.raises(InvalidInput, match="alpaca, sharegpt, raw"):
        load_examples(path, "llama")
    with pytest.raises(UnsupportedFile, match=".csv"):
        load_examples(write(tmp_path, "a.csv", "x,y"), "alpaca")

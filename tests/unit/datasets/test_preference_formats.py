"""Preference and KTO datasets: every accepted shape parses to the same example, and every
bad shape is refused naming its line and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loraflow.datasets.formats import guess_type, load_examples
from loraflow.datasets.preference import pairs_to_kto
from loraflow.errors import InvalidInput

USER = {"role": "user", "content": "Capital of France?"}
GOOD = [{"role": "assistant", "content": "Paris."}]
BAD = [{"role": "assistant", "content": "Lyon."}]


def write(tmp_path: Path, rows: list) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    return path


@pytest.mark.parametrize(
    "record",
    [
        {"instruction": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."},
        {"instruction": "Capital of France?", "input": "", "chosen": "Paris.", "rejected": "Lyon."},
        {
            "conversations": [{"from": "human", "value": "Capital of France?"}],
            "chosen": {"from": "gpt", "value": "Paris."},
            "rejected": {"from": "gpt", "value": "Lyon."},
        },
        {"messages": [USER], "chosen": GOOD, "rejected": BAD},
        {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."},
        {"prompt": [USER], "chosen": GOOD, "rejected": BAD},
    ],
    ids=["alpaca", "alpaca-input", "sharegpt", "messages", "trl", "trl-conversational"],
)
def test_every_pair_shape_gives_the_same_example(tmp_path: Path, record: dict) -> None:
    assert guess_type(record) == "preference"
    [example] = load_examples(write(tmp_path, [record]), "preference")
    assert example == {"prompt": [USER], "chosen": GOOD, "rejected": BAD}


def test_alpaca_instruction_and_input_and_system_make_the_prompt(tmp_path: Path) -> None:
    record = {
        "system": "Be brief.",
        "instruction": "Translate",
        "input": "cat",
        "chosen": "chat",
        "rejected": "dog",
    }
    [example] = load_examples(write(tmp_path, [record]), "preference")
    assert example["prompt"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Translate\n\ncat"},
    ]


def test_kto_records_and_pairs_as_kto(tmp_path: Path) -> None:
    rows = [
        {"prompt": "Capital of France?", "completion": "Paris.", "label": True},
        {"prompt": [USER], "completion": BAD, "label": False},
    ]
    assert guess_type(rows[0]) == "kto"
    examples = load_examples(write(tmp_path, rows), "kto")
    assert examples == [
        {"prompt": [USER], "completion": GOOD, "label": True},
        {"prompt": [USER], "completion": BAD, "label": False},
    ]
    pair = {"prompt": [USER], "chosen": GOOD, "rejected": BAD}
    assert pairs_to_kto([pair]) == examples


@pytest.mark.parametrize(
    ("kind", "record", "expected"),
    [
        ("preference", {"prompt": "Q?", "chosen": "A."}, "line 2: missing field 'rejected'"),
        (
            "preference",
            {"prompt": "Q?", "chosen": "", "rejected": "B."},
            "line 2: field 'chosen' must not be empty",
        ),
        (
            "preference",
            {"prompt": "Q?", "chosen": 3, "rejected": "B."},
            "line 2: field 'chosen' must be a string",
        ),
        (
            "preference",
            {"prompt": "Q?", "chosen": "A.", "rejected": "A."},
            "line 2: 'chosen' and 'rejected' are the same",
        ),
        ("preference", {"chosen": "A.", "rejected": "B."}, "line 2: no prompt"),
        (
            "preference",
            {"instruction": "", "chosen": "A.", "rejected": "B."},
            "line 2: field 'instruction'",
        ),
        (
            "preference",
            {"prompt": "Q?", "chosen": [{"role": "user", "content": "x"}], "rejected": "B."},
            "line 2: field 'chosen' must hold assistant text only",
        ),
        (
            "preference",
            {"messages": [{"role": "wizard", "content": "Q?"}], "chosen": "A.", "rejected": "B."},
            "line 2 field 'messages' turn 1: speaker 'wizard'",
        ),
        (
            "preference",
            {"messages": [USER, GOOD[0]], "chosen": "A.", "rejected": "B."},
            "line 2: field 'messages' must end with a user turn",
        ),
        (
            "preference",
            {"prompt": "Q?", "completion": "A.", "label": True},
            "line 2 is a KTO record",
        ),
        ("preference", ["not", "an", "object"], "line 2: expected a JSON object"),
        (
            "kto",
            {"prompt": "Q?", "completion": "A.", "label": "yes"},
            "line 2: field 'label' must be true or false",
        ),
        (
            "kto",
            {"prompt": "Q?", "completion": "A."},
            "line 2: field 'label' must be true or false",
        ),
        ("kto", {"completion": "A.", "label": True}, "line 2: missing field 'prompt'"),
        ("kto", {"prompt": "Q?", "label": True}, "line 2: missing field 'completion'"),
        ("kto", {"prompt": "Q?", "chosen": "A.", "rejected": "B."}, "line 2 is a preference pair"),
        (
            "alpaca",
            {"instruction": "Q?", "chosen": "A.", "rejected": "B."},
            "looks like a preference record",
        ),
    ],
)
def test_bad_shapes_are_refused_naming_line_and_field(
    tmp_path: Path, kind: str, record: object, expected: str
) -> None:
    good = {
        "preference": {"prompt": "Q?", "chosen": "A.", "rejected": "B."},
        "kto": {"prompt": "Q?", "completion": "A.", "label": True},
        "alpaca": {"instruction": "Q?", "output": "A."},
    }[kind]
    with pytest.raises(InvalidInput) as err:
        load_examples(write(tmp_path, [good, record]), kind)
    assert expected in err.value.message
    assert "data.jsonl" in err.value.message

"""Dataset formats (Alpaca, ShareGPT, raw novels, preference pairs, KTO) parsed into examples.

An example is `{"messages": [{"role", "content"}, ...]}` (chat; loss on assistant turns)
or `{"text": str}` (raw text; loss on every token); preference types give the examples of
datasets/preference.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from loraflow.datasets.preference import KTO_HINT, PAIR_HINT, parse_kto, parse_pair
from loraflow.datasets.records import Record, read_records
from loraflow.datasets.turns import turn_message
from loraflow.errors import InvalidInput
from loraflow.safe_json import DEFAULT_LIMITS, JsonLimits
from loraflow.text import split_text

DATASET_TYPES = ("alpaca", "sharegpt", "raw", "preference", "kto")
# The types that hold preference data rather than text to imitate.
PREFERENCE_TYPES = ("preference", "kto")
Example = dict[str, Any]

# ShareGPT speaker names and the OpenAI-style roles they map to.
_FIELD_HINTS = {
    "alpaca": 'Alpaca records are {"instruction", "input" (optional), "output"}',
    "sharegpt": 'ShareGPT records are {"conversations": [{"from": "human"|"gpt", "value"}]}',
    "raw": 'raw records are {"title", "content"} (or {"text"}), or a .txt file',
    "preference": PAIR_HINT,
    "kto": KTO_HINT,
}


def check_type(dataset_type: str) -> str:
    """The normalized dataset type; raise with the allowed ones when unknown."""
    value = (dataset_type or "").strip().lower()
    if value not in DATASET_TYPES:
        raise InvalidInput(
            f"dataset_type {dataset_type!r} is not one of {', '.join(DATASET_TYPES)}"
        )
    return value


def guess_type(record: Any) -> str | None:
    """The format one record looks like, or None."""
    if not isinstance(record, dict):
        return None
    if "chosen" in record or "rejected" in record:
        return "preference"
    if "completion" in record and "label" in record:
        return "kto"
    if "conversations" in record or "messages" in record:
        return "sharegpt"
    if "instruction" in record or "output" in record:
        return "alpaca"
    if "content" in record or "text" in record:
        return "raw"
    return None


def load_examples(
    path: Path,
    dataset_type: str,
    chunk_size: int = 2048,
    json_limits: JsonLimits = DEFAULT_LIMITS,
) -> list[Example]:
    """Parse a dataset file of `dataset_type` into examples; raw text is split into chunks."""
    kind = check_type(dataset_type)
    if path.suffix.lower() == ".txt" and kind != "raw":
        raise InvalidInput(
            f"{path.name!r} is plain text, which is a raw dataset, not {kind}",
            hint="choose dataset_type 'raw' for .txt files",
        )
    parse: Callable[[Record], list[Example]] = {
        "alpaca": _alpaca,
        "sharegpt": _sharegpt,
        "raw": lambda r: _raw(r, chunk_size),
        "preference": parse_pair,
        "kto": parse_kto,
    }[kind]
    examples: list[Example] = []
    for record in read_records(path, json_limits):
        examples.extend(parse(record))
    if not examples:
        raise InvalidInput(f"dataset {path.name!r} has no usable records")
    return examples


def _record(record: Record, kind: str) -> dict[str, Any]:
    data = record.data
    if not isinstance(data, dict):
        raise InvalidInput(
            f"{record.where}: expected a JSON object, got {type(data).__name__}",
            hint=_FIELD_HINTS[kind],
        )
    looks = guess_type(data)
    if looks is not None and looks != kind:
        raise InvalidInput(
            f"{record.where} looks like a {looks} record (keys {sorted(data)}), not {kind}",
            hint=f"choose dataset_type {looks!r}, or fix the file: {_FIELD_HINTS[kind]}",
        )
    return data


def _text_field(record: Record, data: dict, key: str, kind: str, required: bool = True) -> str:
    value = data.get(key)
    if value is None:
        if required:
            raise InvalidInput(
                f"{record.where}: missing field {key!r} (has {sorted(data)})",
                hint=_FIELD_HINTS[kind],
            )
        return ""
    if not isinstance(value, str):
        raise InvalidInput(f"{record.where}: field {key!r} must be a string, not {value!r:.60}")
    return value


def _alpaca(record: Record) -> list[Example]:
    data = _record(record, "alpaca")
    instruction = _text_field(record, data, "instruction", "alpaca")
    extra = _text_field(record, data, "input", "alpaca", required=False)
    output = _text_field(record, data, "output", "alpaca")
    if not instruction.strip() or not output.strip():
        raise InvalidInput(f"{record.where}: 'instruction' and 'output' must not be empty")
    prompt = f"{instruction.strip()}\n\n{extra.strip()}" if extra.strip() else instruction.strip()
    messages = []
    if isinstance(data.get("system"), str) and data["system"].strip():
        messages.append({"role": "system", "content": data["system"].strip()})
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    return [{"messages": messages}]


def _sharegpt(record: Record) -> list[Example]:
    data = _record(record, "sharegpt")
    key = "conversations" if "conversations" in data else "messages"
    turns = data.get(key)
    if not isinstance(turns, list) or not turns:
        raise InvalidInput(
            f"{record.where}: field 'conversations' must be a non-empty list",
            hint=_FIELD_HINTS["sharegpt"],
        )
    messages = []
    if isinstance(data.get("system"), str) and data["system"].strip():
        messages.append({"role": "system", "content": data["system"].strip()})
    for i, turn in enumerate(turns, 1):
        where = f"{record.where} turn {i}"
        message = turn_message(turn, where, _FIELD_HINTS["sharegpt"])
        if message["role"] == "system" and messages:
            raise InvalidInput(f"{where}: a system prompt must come first")
        messages.append(message)
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise InvalidInput(
            f"{record.where}: no 'gpt'/'assistant' turn with text, so nothing to learn from"
        )
    return [{"messages": messages}]


def _raw(record: Record, chunk_size: int) -> list[Example]:
    data = _record(record, "raw")
    key = "content" if "content" in data else "text"
    content = _text_field(record, data, key, "raw")
    return [{"text": c.text} for c in split_text(content, chunk_size, 0)]

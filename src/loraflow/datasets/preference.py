"""Preference datasets: answer pairs (DPO, ORPO) and labelled single answers (KTO).

A pair example is `{"prompt": [messages], "chosen": [messages], "rejected": [messages]}` and a
KTO example `{"prompt": [messages], "completion": [messages], "label": bool}`; the answer
messages are the assistant turns that follow the prompt.

Accepted pair records (told apart by their fields):
- Alpaca style: `{"instruction", "input"?, "system"?, "chosen", "rejected"}`
- ShareGPT / messages style: `{"conversations" | "messages": [turns], "chosen", "rejected"}`
  where chosen and rejected are a turn (`{"from": "gpt", "value"}`), a string, or a list of
  assistant turns
- TRL style: `{"prompt", "chosen", "rejected"}`, each a string or a list of turns
KTO records: `{"prompt", "completion", "label"}` with a boolean label.
"""

from __future__ import annotations

from typing import Any

from loraflow.datasets.records import Record
from loraflow.datasets.turns import turn_message
from loraflow.errors import InvalidInput

Example = dict[str, Any]
Messages = list[dict[str, str]]

PAIR_HINT = (
    'preference records are {"instruction", "input"?, "chosen", "rejected"}, '
    '{"conversations" or "messages": [...], "chosen", "rejected"} or '
    '{"prompt", "chosen", "rejected"}'
)
KTO_HINT = 'KTO records are {"prompt", "completion", "label": true|false}'


def _object(record: Record, hint: str) -> dict[str, Any]:
    if not isinstance(record.data, dict):
        raise InvalidInput(
            f"{record.where}: expected a JSON object, got {type(record.data).__name__}",
            hint=hint,
        )
    return record.data


def _turns(where: str, field: str, value: Any, default_role: str) -> Messages:
    """Messages from a string, one turn object, or a list of turns."""
    if isinstance(value, str):
        if not value.strip():
            raise InvalidInput(f"{where}: field {field!r} must not be empty")
        return [{"role": default_role, "content": value}]
    items = [value] if isinstance(value, dict) else value
    if not isinstance(items, list) or not items:
        raise InvalidInput(
            f"{where}: field {field!r} must be a string, a turn object or a non-empty list "
            f"of turns, not {value!r:.60}"
        )
    return [
        turn_message(turn, f"{where} field {field!r} turn {i}") for i, turn in enumerate(items, 1)
    ]


def _answer(where: str, data: dict[str, Any], field: str) -> Messages:
    if field not in data:
        raise InvalidInput(f"{where}: missing field {field!r} (has {sorted(data)})")
    turns = _turns(where, field, data[field], "assistant")
    if any(t["role"] != "assistant" for t in turns) or not any(t["content"].strip() for t in turns):
        raise InvalidInput(
            f"{where}: field {field!r} must hold assistant text only (the answer, not the prompt)"
        )
    return turns


def _system(data: dict[str, Any]) -> Messages:
    text = data.get("system")
    return (
        [{"role": "system", "content": text.strip()}]
        if isinstance(text, str) and text.strip()
        else []
    )


def _prompt(where: str, data: dict[str, Any], hint: str) -> Messages:
    """The prompt messages of a record of any accepted style."""
    if "instruction" in data:
        instruction, extra = data.get("instruction"), data.get("input", "")
        if not isinstance(instruction, str) or not instruction.strip():
            raise InvalidInput(f"{where}: field 'instruction' must be a non-empty string")
        if extra is None:
            extra = ""
        if not isinstance(extra, str):
            raise InvalidInput(f"{where}: field 'input' must be a string, not {extra!r:.60}")
        text = f"{instruction.strip()}\n\n{extra.strip()}" if extra.strip() else instruction.strip()
        return _system(data) + [{"role": "user", "content": text}]
    for key in ("conversations", "messages", "prompt"):
        if key in data:
            turns = _system(data) + _turns(where, key, data[key], "user")
            if turns[-1]["role"] != "user":
                raise InvalidInput(f"{where}: field {key!r} must end with a user turn")
            if any(t["role"] == "system" for t in turns[1:]):
                raise InvalidInput(f"{where}: field {key!r}: a system prompt must come first")
            return turns
    raise InvalidInput(
        f"{where}: no prompt: expected 'instruction', 'conversations', 'messages' or 'prompt' "
        f"(has {sorted(data)})",
        hint=hint,
    )


def parse_pair(record: Record) -> list[Example]:
    """One preference pair from a record of any accepted pair style."""
    data = _object(record, PAIR_HINT)
    if "completion" in data or "label" in data:
        raise InvalidInput(
            f"{record.where} is a KTO record (keys {sorted(data)}), not a preference pair",
            hint="choose dataset_type 'kto', or give 'chosen' and 'rejected' answers",
        )
    prompt = _prompt(record.where, data, PAIR_HINT)
    chosen = _answer(record.where, data, "chosen")
    rejected = _answer(record.where, data, "rejected")
    if chosen == rejected:
        raise InvalidInput(f"{record.where}: 'chosen' and 'rejected' are the same answer")
    return [{"prompt": prompt, "chosen": chosen, "rejected": rejected}]


def parse_kto(record: Record) -> list[Example]:
    """One labelled answer from a `{"prompt", "completion", "label"}` record."""
    data = _object(record, KTO_HINT)
    if "chosen" in data or "rejected" in data:
        raise InvalidInput(
            f"{record.where} is a preference pair (keys {sorted(data)}), not a KTO record",
            hint="choose dataset_type 'preference', or give 'completion' and 'label'",
        )
    if "prompt" not in data:
        raise InvalidInput(
            f"{record.where}: missing field 'prompt' (has {sorted(data)})", hint=KTO_HINT
        )
    prompt = _prompt(
        record.where, {"prompt": data["prompt"], "system": data.get("system")}, KTO_HINT
    )
    completion = _answer(record.where, data, "completion")
    label = data.get("label")
    if not isinstance(label, bool):
        raise InvalidInput(
            f"{record.where}: field 'label' must be true or false, not {label!r:.60}",
            hint=KTO_HINT,
        )
    return [{"prompt": prompt, "completion": completion, "label": label}]


def pairs_to_kto(examples: list[Example]) -> list[Example]:
    """Preference pairs as KTO examples: the chosen answer desirable, the rejected not."""
    out: list[Example] = []
    for ex in examples:
        out.append({"prompt": ex["prompt"], "completion": ex["chosen"], "label": True})
        out.append({"prompt": ex["prompt"], "completion": ex["rejected"], "label": False})
    return out

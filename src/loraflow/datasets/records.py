"""Read dataset files into records, with errors that name the file and the line or record."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraflow.errors import InvalidInput, UnsupportedFile
from loraflow.safe_json import DEFAULT_LIMITS, JsonLimits
from loraflow.safe_json import loads as bounded_loads

DATA_SUFFIXES = (".json", ".jsonl", ".txt")


@dataclass
class Record:
    """One JSON object of a dataset file and where it came from, for error messages."""

    data: Any
    where: str


def read_records(path: Path, limits: JsonLimits = DEFAULT_LIMITS) -> list[Record]:
    """Records of a .json (array or object) or .jsonl file; .txt gives one {"content"} record.

    JSON is read within `limits` (nesting depth, element count), per line for .jsonl.
    """
    suffix = path.suffix.lower()
    if suffix not in DATA_SUFFIXES:
        raise UnsupportedFile(
            f"{path.name!r} has type {suffix or '(none)'!r}; dataset files must be "
            f"{', '.join(DATA_SUFFIXES)}"
        )
    text = _read_text(path)
    if not text.strip():
        raise InvalidInput(f"dataset {path.name!r} is empty")
    if suffix == ".txt":
        return [Record({"title": path.stem, "content": text}, f"{path.name}")]
    if suffix == ".jsonl":
        return _jsonl(path.name, text, limits)
    try:
        data = bounded_loads(text, limits, where=repr(path.name))
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"{path.name!r} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            hint="a .json dataset is one JSON array of records; use .jsonl for one per line",
        ) from exc
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise InvalidInput(
            f"{path.name!r} must hold a JSON array of records, not {type(data).__name__}"
        )
    return [Record(item, f"{path.name} record {i}") for i, item in enumerate(data, 1)]


def _jsonl(name: str, text: str, limits: JsonLimits) -> list[Record]:
    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = bounded_loads(line, limits, where=f"{name!r} line {lineno}")
        except json.JSONDecodeError as exc:
            raise InvalidInput(
                f"{name!r} line {lineno} is not valid JSON: {exc.msg} (column {exc.colno})",
                hint="a .jsonl dataset holds one JSON object per line",
            ) from exc
        records.append(Record(item, f"{name} line {lineno}"))
    return records


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise InvalidInput(f"dataset file {path.name!r} does not exist") from exc
    try:
        # utf-8-sig drops the BOM that Windows editors put in front of JSON files.
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"{path.name!r} is not UTF-8 text (byte {exc.start})",
            hint="save the file as UTF-8",
        ) from exc

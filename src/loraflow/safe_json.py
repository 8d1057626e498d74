"""Bounded JSON reading for everything a user sends: request bodies, dataset and document files.

Python's json module recurses once per nesting level (a 5,000-deep array raises
RecursionError), accepts NaN and Infinity, turns 1e999 into inf and keeps lone UTF-16
surrogates that later fail to encode. `loads` scans the text first, without recursion,
so that nesting, element count and size are refused with a message naming the limit and
the place, before any object is built; then it parses with the non-standard parts refused.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from loraflow.errors import InvalidInput, TooLarge

DEFAULT_MAX_DEPTH = 64
DEFAULT_MAX_ITEMS = 1_000_000
# Python's own recursion limit is 1,000 frames; the scan keeps the parser well below it.
MAX_DEPTH_CEILING = 512
# Longer integers are refused by int() itself (sys.get_int_max_str_digits, 4,300 by default).
MAX_INT_DIGITS = 100

# A string literal (escapes included) or one structural character, outside strings.
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


@dataclass(frozen=True)
class JsonLimits:
    """How deep, how many elements and how many bytes one JSON document may have."""

    max_depth: int = DEFAULT_MAX_DEPTH
    max_items: int = DEFAULT_MAX_ITEMS
    max_bytes: int | None = None
    # Named in refusals, so the user knows which setting to change.
    depth_setting: str = "JSON_MAX_DEPTH"
    items_setting: str = "JSON_MAX_ITEMS"
    bytes_setting: str = "MAX_BODY_MB"


DEFAULT_LIMITS = JsonLimits()


def loads(data: str | bytes, limits: JsonLimits = DEFAULT_LIMITS, where: str = "") -> Any:
    """Parse one JSON document within `limits`.

    Syntax errors raise json.JSONDecodeError as json.loads does (callers word them);
    a limit or a non-standard value raises InvalidInput or TooLarge naming `where`.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    prefix = f"{where}: " if where else ""
    if limits.max_bytes is not None and len(raw) > limits.max_bytes:
        raise TooLarge(
            f"{prefix}JSON is {len(raw):,} bytes, over the limit of {limits.max_bytes:,} "
            f"({limits.bytes_setting})"
        )
    text = data if isinstance(data, str) else _decode(raw, prefix)
    _check_shape(raw, limits, prefix)
    try:
        value = json.loads(
            text,
            parse_constant=lambda name: _refuse(prefix, f"{name} is not valid JSON"),
            parse_float=lambda s: _float(s, prefix),
            parse_int=lambda s: _int(s, prefix),
        )
    except RecursionError as exc:  # only reachable with a ceiling set above the stack
        raise InvalidInput(f"{prefix}JSON is nested too deeply to read") from exc
    if _SURROGATE_ESCAPE.search(raw) and not _encodable(value):
        raise InvalidInput(
            f"{prefix}JSON holds a lone UTF-16 surrogate escape (\\ud800-\\udfff without its "
            "pair); such text cannot be stored or tokenized"
        )
    return value


def position(raw: bytes, offset: int) -> str:
    """'line L, column C' of a byte offset, for messages."""
    line = raw.count(b"\n", 0, offset) + 1
    column = offset - (raw.rfind(b"\n", 0, offset) + 1) + 1
    return f"line {line}, column {column}"


def _check_shape(raw: bytes, limits: JsonLimits, prefix: str) -> None:
    # Element count: values are separated by commas, and every array or object is one more.
    # Counted on the text with string literals blanked, so commas inside strings do not count.
    bare = _STRINGS.sub(b'""', raw) if b'"' in raw else raw
    items = bare.count(b",") + bare.count(b"[") + bare.count(b"{") + 1
    if items > limits.max_items:
        raise TooLarge(
            f"{prefix}JSON has about {items:,} elements, over the limit of "
            f"{limits.max_items:,} ({limits.items_setting})"
        )
    opens = bare.count(b"[") + bare.count(b"{")
    if opens <= limits.max_depth:
        return  # cannot be deeper than the number of brackets it has
    depth = 0
    for match in _TOKENS.finditer(raw):
        char = match.group()[:1]
        if char in (b"[", b"{"):
            depth += 1
            if depth > limits.max_depth:
                raise InvalidInput(
                    f"{prefix}JSON is nested deeper than the limit of {limits.max_depth} "
                    f"levels ({limits.depth_setting}) at {position(raw, match.start())}"
                )
        elif char in (b"]", b"}"):
            depth -= 1


def _decode(raw: bytes, prefix: str) -> str:
    try:
        # utf-8-sig drops a byte-order mark; json.detect_encoding also finds UTF-16/32.
        encoding = json.detect_encoding(raw)
        return raw.decode("utf-8-sig" if encoding == "utf-8" else encoding)
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{prefix}JSON is not valid UTF-8 (byte {exc.start})") from exc


def _refuse(prefix: str, why: str) -> Any:
    raise InvalidInput(f"{prefix}{why}", hint="JSON has no NaN or Infinity; send null or a number")


def _float(text: str, prefix: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise InvalidInput(f"{prefix}the number {text[:40]} is out of range for a float")
    return value


def _int(text: str, prefix: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise InvalidInput(
            f"{prefix}an integer of {len(text.lstrip('-'))} digits is out of range "
            f"(at most {MAX_INT_DIGITS})"
        )
    return int(text)


def _encodable(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True

"""Memory entries: the kinds of facts a story keeps, and the checks on their fields."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from loraflow.errors import InvalidInput

KINDS = ("character", "plot_event", "world", "dialogue", "note")
# Names the seed and lorebook tools use for the same kinds.
KIND_ALIASES = {
    "plot": "plot_event",
    "event": "plot_event",
    "setting": "world",
    "world_setting": "world",
    "key_dialogue": "dialogue",
}
MAX_TITLE = 256
MAX_CONTENT = 8000
MAX_KEYWORDS = 50
MAX_KEYWORD = 200
IMPORTANCE_RANGE = (1, 10)
DEFAULT_IMPORTANCE = 5
# Chapters and positions fit any database integer column.
MAX_POSITION = 10**9


@dataclass
class EntryFields:
    """What a writer sets on an entry; every other field is bookkeeping."""

    kind: str
    title: str
    content: str
    keywords: list[str] = field(default_factory=list)
    importance: int = DEFAULT_IMPORTANCE
    always_on: bool = False
    chapter: int | None = None
    position: int | None = None

    def validate(self) -> EntryFields:
        """Normalise the fields; InvalidInput names the bad value and the allowed ones."""
        self.kind = check_kind(self.kind)
        self.title = check_text(self.title, "title", MAX_TITLE)
        self.content = check_text(self.content, f"content of {self.title!r}", MAX_CONTENT)
        self.keywords = check_keywords(self.keywords)
        lo, hi = IMPORTANCE_RANGE
        if type(self.importance) is not int or not lo <= self.importance <= hi:
            raise InvalidInput(f"importance={self.importance!r} must be an integer {lo}..{hi}")
        if not isinstance(self.always_on, bool):
            raise InvalidInput(f"always_on={self.always_on!r} must be true or false")
        for name in ("chapter", "position"):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or not 0 <= value <= MAX_POSITION):
                raise InvalidInput(f"{name}={value!r} must be a whole number 0..{MAX_POSITION}")
        return self


def check_text(value: Any, what: str, limit: int) -> str:
    """A stripped, non-empty string of at most `limit` characters that UTF-8 can store."""
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string, not {value!r}")
    text = value.strip()
    if not text or len(text) > limit:
        raise InvalidInput(f"{what} has {len(text)} characters; give 1 to {limit}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(f"{what} holds characters that are not valid Unicode") from exc
    return text


@dataclass
class MemoryEntry:
    """One version of a fact; `entry_id` is shared by all versions, `id` is this version's."""

    id: str
    entry_id: str
    project_id: str
    version: int
    current: bool
    kind: str
    title: str
    content: str
    keywords: list[str]
    importance: int
    always_on: bool
    chapter: int | None
    position: int | None
    note: str | None
    created_at: str
    updated_at: str

    def fields(self) -> EntryFields:
        """The writer-set fields of this version."""
        return EntryFields(
            self.kind,
            self.title,
            self.content,
            list(self.keywords),
            self.importance,
            self.always_on,
            self.chapter,
            self.position,
        )

    def names(self) -> list[str]:
        """The plain (non-regex) words that name this entry: its title and keywords."""
        words = [self.title, *(k for k in self.keywords if not is_regex(k))]
        return list(dict.fromkeys(w for w in words if w.strip()))


def check_kind(kind: Any) -> str:
    """The canonical kind for `kind`, or InvalidInput listing the kinds."""
    raw = str(kind or "").strip().lower().replace("-", "_").replace(" ", "_")
    raw = KIND_ALIASES.get(raw, raw)
    if raw not in KINDS:
        raise InvalidInput(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    return raw


def is_regex(keyword: str) -> bool:
    """Keywords written as /pattern/ are regular expressions."""
    return len(keyword) > 2 and keyword.startswith("/") and keyword.endswith("/")


def check_keywords(keywords: Any) -> list[str]:
    """Stripped, de-duplicated keywords; blank ones and bad regexes are rejected."""
    if keywords is None:
        return []
    if not isinstance(keywords, list):
        raise InvalidInput(f"keywords must be a list of strings, not {keywords!r}")
    if len(keywords) > MAX_KEYWORDS:
        raise InvalidInput(f"{len(keywords)} keywords given; the limit is {MAX_KEYWORDS}")
    out: list[str] = []
    for k in keywords:
        if not isinstance(k, str) or not k.strip():
            raise InvalidInput(f"keyword {k!r} is empty; give non-blank words or /regex/")
        k = check_text(k, f"keyword {k[:40]!r}", MAX_KEYWORD)
        if is_regex(k):
            try:
                re.compile(k[1:-1])
            except re.error as exc:
                raise InvalidInput(
                    f"keyword {k!r} is not a valid regular expression: {exc}"
                ) from exc
        if k not in out:
            out.append(k)
    return out

"""Split text into overlapping chunks at the most natural boundary (English and Chinese).

Shared by the knowledge base (rag) and training-data preparation (datasets).
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass

from loraflow.errors import InvalidInput

_CLOSERS = "\"'”’」』）)\\]】》"
# Each pattern marks the position right after a boundary; earlier patterns are better breaks.
_LEVELS = (
    # Paragraph break: a blank line.
    re.compile(r"\n[ \t]*\n\s*"),
    # Sentence end: Chinese/full-width marks need no space after them; English ones do,
    # so "3.14" or "e.g.x" are not split. A single line break counts as well (lists).
    re.compile(rf"[。！？；…．]+[{_CLOSERS}]*|[.!?]+[{_CLOSERS}]*(?=\s)|\n"),
    # Clause punctuation: full-width marks anywhere, ASCII ones only before a space ("3,000").
    re.compile(r"[，、：]|[,;:](?=\s)"),
    # Any whitespace run: break after it, so the next chunk starts at a word.
    re.compile(r"\s+"),
)


@dataclass
class Chunk:
    """A piece of the source text; `text == source[start:end]`."""

    text: str
    start: int
    end: int


def split_text(text: str, chunk_size: int, overlap: int) -> list[Chunk]:
    """Split `text` into chunks of at most `chunk_size` chars overlapping by about `overlap`."""
    check_chunk_params(chunk_size, overlap)
    n = len(text)
    stripped_end = len(text.rstrip())
    if stripped_end == 0:
        return []
    bounds = [[m.end() for m in pat.finditer(text)] for pat in _LEVELS]
    # A break must leave room for the overlap, or the next chunk would not move forward.
    min_len = max(chunk_size // 4, overlap + 1)
    chunks: list[Chunk] = []
    start = _skip_space(text, 0)
    while start < stripped_end:
        limit = start + chunk_size
        end = n if limit >= n else (_best_break(bounds, start + min_len, limit) or limit)
        piece = text[start:end].rstrip()
        chunks.append(Chunk(text=piece, start=start, end=start + len(piece)))
        if end >= stripped_end:
            break
        nxt = _overlap_start(bounds, start, end, overlap)
        start = _skip_space(text, nxt)
    return chunks


def check_chunk_params(chunk_size: int, overlap: int) -> None:
    """Raise InvalidInput unless 1 <= chunk_size and 0 <= overlap < chunk_size."""
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise InvalidInput(f"chunk_size={chunk_size!r} must be an integer >= 1")
    if not isinstance(overlap, int) or not 0 <= overlap < chunk_size:
        raise InvalidInput(
            f"overlap={overlap!r} must be an integer with 0 <= overlap < chunk_size ({chunk_size})"
        )


def _best_break(bounds: list[list[int]], lo: int, hi: int) -> int | None:
    """The last boundary in [lo, hi] of the best level that has one."""
    for level in bounds:
        i = bisect_right(level, hi)
        if i and level[i - 1] >= lo:
            return level[i - 1]
    return None


def _overlap_start(bounds: list[list[int]], start: int, end: int, overlap: int) -> int:
    """Where the next chunk starts: about `overlap` chars before `end`, at a boundary if any."""
    if overlap == 0:
        return end
    lo = max(end - overlap, start + 1)
    # Accept a boundary only if it keeps at least half the requested overlap.
    hi = min(max(lo, end - overlap // 2), end - 1)
    for level in bounds:
        i = bisect_left(level, lo)
        if i < len(level) and level[i] <= hi:
            return level[i]
    return lo


def _skip_space(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i].isspace():
        i += 1
    return i


# A word, or one CJK character (Chinese and Japanese run words together).
_UNIT = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]|[^\s\u3400-\u9fff\uf900-\ufaff]+")


def repeated_ngram(text: str, n: int = 8) -> bool:
    """Whether any run of `n` words (CJK: characters) occurs twice: how a looping answer shows.

    Answers, generated chapters and the validator's probes are judged by this one measure.
    """
    units = _UNIT.findall(text.lower())
    seen: set[tuple[str, ...]] = set()
    for i in range(len(units) - n + 1):
        gram = tuple(units[i : i + n])
        if gram in seen:
            return True
        seen.add(gram)
    return False

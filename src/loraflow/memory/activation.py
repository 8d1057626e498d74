"""Which memory entries go into a prompt, in which order, and which are dropped for budget.

Order (stable, documented in the README):
1. always-on entries, then entries whose keywords occur in the recent text, then entries
   found by vector similarity (an entry counts once, under its first reason);
2. within a group: importance (high first), then semantic score (high first), then the
   chapter/position where the fact became true (early first; none last), then creation
   time, then id, so equal inputs always give the same prompt.
Entries are taken in that order while they fit the token budget; one that does not fit is
reported as dropped and smaller later entries may still be taken. The prompt lists the
used entries in the same order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from loraflow.memory.entries import MemoryEntry
from loraflow.memory.render import entry_line
from loraflow.memory.triggers import keyword_hits

Reason = Literal["always_on", "keyword", "semantic"]
_RANK: dict[str, int] = {"always_on": 0, "keyword": 1, "semantic": 2}
_LAST = 1 << 62


@dataclass
class Candidate:
    """An entry a trigger selected, with why and how many prompt tokens it takes."""

    entry: MemoryEntry
    reason: Reason
    matched: list[str] = field(default_factory=list)
    score: float | None = None
    tokens: int = 0

    def sort_key(self) -> tuple:
        e = self.entry
        return (
            _RANK[self.reason],
            -e.importance,
            -(self.score or 0.0),
            _LAST if e.chapter is None else e.chapter,
            _LAST if e.position is None else e.position,
            e.created_at,
            e.entry_id,
        )


@dataclass
class Activation:
    """The outcome for one generation: used entries (prompt order) and dropped ones."""

    used: list[Candidate]
    dropped: list[Candidate]
    budget: int
    tokens_used: int


def candidates(
    entries: list[MemoryEntry], recent_text: str, semantic: dict[str, float]
) -> list[Candidate]:
    """Current entries selected by always-on, keywords (or the title) and similarity."""
    found: list[Candidate] = []
    for e in entries:
        if not e.current:
            continue
        if e.always_on:
            found.append(Candidate(e, "always_on"))
            continue
        # Without keywords the title is the trigger, as writers expect of a named character.
        hits = keyword_hits(e.keywords or [e.title], recent_text)
        if hits:
            found.append(Candidate(e, "keyword", matched=hits))
        elif e.entry_id in semantic:
            found.append(Candidate(e, "semantic", score=round(semantic[e.entry_id], 4)))
    return sorted(found, key=Candidate.sort_key)


def activate(
    entries: list[MemoryEntry],
    recent_text: str,
    semantic: dict[str, float],
    budget: int,
    count_tokens: Callable[[str], int],
    language: str = "en",
) -> Activation:
    """Select entries in the documented order and keep those that fit `budget` tokens."""
    used: list[Candidate] = []
    dropped: list[Candidate] = []
    total = 0
    for cand in candidates(entries, recent_text, semantic):
        cand.tokens = count_tokens(entry_line(cand.entry, language))
        if total + cand.tokens <= budget:
            used.append(cand)
            total += cand.tokens
        else:
            dropped.append(cand)
    return Activation(used, dropped, budget, total)

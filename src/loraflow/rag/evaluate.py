"""Retrieval quality on a labelled question set: recall@k and MRR per retrieval mode."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from loraflow.errors import InvalidInput
from loraflow.safe_json import loads as bounded_loads

# A search function: (question, k) -> the sources of the ranked chunks, best first.
Searcher = Callable[[str, int], list[str]]


@dataclass
class LabelledQuestion:
    """One question and the document that answers it."""

    question: str
    expected_source: str
    lang: str = ""


@dataclass
class ModeScore:
    """Quality of one retrieval mode over a question set."""

    mode: str
    recall: dict[int, float] = field(default_factory=dict)
    mrr: float = 0.0
    questions: int = 0
    misses: list[str] = field(default_factory=list)


def load_qa(path: Path, lang: str | None = None) -> list[LabelledQuestion]:
    """Read a JSONL file of {"question", "expected_source", "lang"?} rows."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InvalidInput(f"cannot read the question set {str(path)!r}: {exc.strerror}") from exc
    rows: list[LabelledQuestion] = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            raw = bounded_loads(line, where=f"line {n}")
            row = LabelledQuestion(
                str(raw["question"]), str(raw["expected_source"]), str(raw.get("lang", ""))
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInput(
                f"{path}:{n} is not a JSON object with 'question' and 'expected_source': {exc}"
            ) from exc
        if lang is None or row.lang == lang:
            rows.append(row)
    if not rows:
        raise InvalidInput(
            f"{str(path)!r} holds no questions" + (f" for lang={lang!r}" if lang else "")
        )
    return rows


def evaluate(mode: str, search: Searcher, rows: list[LabelledQuestion], ks: list[int]) -> ModeScore:
    """Recall@k (the expected document among the first k chunks) and MRR over `rows`."""
    depth = max(ks)
    score = ModeScore(mode=mode, questions=len(rows))
    hits = dict.fromkeys(ks, 0)
    rr = 0.0
    for row in rows:
        ranked = search(row.question, depth)
        rank = next((i for i, s in enumerate(ranked, 1) if s == row.expected_source), None)
        if rank is None:
            score.misses.append(row.question)
            continue
        rr += 1.0 / rank
        for k in ks:
            hits[k] += rank <= k
    score.recall = {k: hits[k] / len(rows) for k in ks}
    score.mrr = rr / len(rows)
    return score

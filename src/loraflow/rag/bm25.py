"""Keyword search over a store's chunks with bm25s; tokens suit both English and Chinese."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

import numpy as np

from loraflow.rag.store import ChunkRecord

# Latin words and numbers, or runs of CJK ideographs (split further below).
_TOKEN_RE = re.compile(r"[0-9a-z_]+|[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_CJK_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
# Short on purpose: BM25's idf already discounts common words; these only add noise.
_STOPWORDS = frozenset(
    (  # noqa: SIM905 - a word list reads best as one string
        "a an and are as at be by can do does for from how i in is it my of on or the to "
        "what when where which who why with you your"
    ).split()
)


def tokenize(text: str) -> list[str]:
    """Lower-cased words for Latin text; single characters plus bigrams for Chinese runs."""
    tokens: list[str] = []
    for m in _TOKEN_RE.finditer(text.lower()):
        word = m.group(0)
        if _CJK_RE.match(word):
            # Chinese has no spaces: unigrams find any overlap, bigrams reward phrases.
            tokens.extend(word)
            tokens.extend(word[i : i + 2] for i in range(len(word) - 1))
        elif word not in _STOPWORDS:
            tokens.append(word)
    return tokens


@dataclass
class KeywordHit:
    """A chunk with its BM25 score (> 0: it shares at least one query term)."""

    chunk: ChunkRecord
    score: float


class BM25Index:
    """A BM25 index over a chunk snapshot; rebuilt by the owner when the store changes."""

    def __init__(self, chunks: list[ChunkRecord]) -> None:
        import bm25s

        self.chunks = list(chunks)
        self._lock = threading.Lock()
        self._retriever = bm25s.BM25()
        if self.chunks:
            corpus = [tokenize(c.text) or ["\u2205"] for c in self.chunks]
            self._retriever.index(corpus, show_progress=False)

    def search(self, query: str, k: int) -> list[KeywordHit]:
        """Up to `k` chunks sharing terms with `query`, best first; [] when none match."""
        terms = tokenize(query)
        if not self.chunks or not terms or k < 1:
            return []
        with self._lock:
            scores = np.asarray(self._retriever.get_scores(terms), dtype=np.float32)
        order = np.argsort(-scores, kind="stable")[:k]
        return [KeywordHit(self.chunks[i], float(scores[i])) for i in order if scores[i] > 0]

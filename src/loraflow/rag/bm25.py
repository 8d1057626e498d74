"""Keyword search over a store's chunks with bm25s; tokens suit both English and Chinese."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loraflow.rag.store import ChunkRecord

log = logging.getLogger(__name__)

# Names the tokenizer below; a saved index made with another one is ignored (rebuilt).
TOKENIZER = "words+cjk-bigrams-1"
# bm25s' file names, prefixed so they sit beside index.faiss and meta.json in a version folder.
_FILES = {
    "data_name": "bm25.data.npy",
    "indices_name": "bm25.indices.npy",
    "indptr_name": "bm25.indptr.npy",
    "vocab_name": "bm25.vocab.json",
    "params_name": "bm25.params.json",
    "nnoc_name": "bm25.nonoccurrence.npy",
}
KEYWORD_META = "bm25.loraflow.json"

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


# BM25's term-frequency saturation for the sparse keyword vectors below.
_K1 = 1.2


def sparse_terms(text: str) -> tuple[list[int], list[float]]:
    """A sparse keyword vector of `text` for a database that applies IDF itself (Qdrant).

    Term ids are a stable hash of the token (the same in every process and release, unlike
    Python's hash()); values are BM25's saturated term frequency with k1=1.2 and no length
    normalisation (b=0), as the database multiplies in only the IDF.
    """
    counts: dict[int, int] = {}
    for token in tokenize(text):
        digest = hashlib.blake2b(token.encode("utf-8"), digest_size=4).digest()
        term = int.from_bytes(digest, "little") & 0x7FFFFFFF
        counts[term] = counts.get(term, 0) + 1
    ids = sorted(counts)
    return ids, [counts[i] * (_K1 + 1) / (counts[i] + _K1) for i in ids]


@dataclass
class KeywordHit:
    """A chunk with its BM25 score (> 0: it shares at least one query term)."""

    chunk: ChunkRecord
    score: float


class BM25Index:
    """A BM25 index over a chunk snapshot; built by the writer, or loaded from its save."""

    def __init__(self, chunks: list[ChunkRecord], _retriever: object | None = None) -> None:
        import bm25s

        self.chunks = list(chunks)
        self._lock = threading.Lock()
        if _retriever is not None:
            self._retriever = _retriever
            return
        self._retriever = bm25s.BM25()
        if self.chunks:
            corpus = [tokenize(c.text) or ["\u2205"] for c in self.chunks]
            self._retriever.index(corpus, show_progress=False)

    def save(self, folder: Path) -> None:
        """Write the index files into `folder` (an empty index writes none)."""
        if not self.chunks:
            return
        self._retriever.save(folder, show_progress=False, **_FILES)
        (folder / KEYWORD_META).write_text(
            json.dumps({"tokenizer": TOKENIZER, "n_chunks": len(self.chunks)}), encoding="utf-8"
        )

    @classmethod
    def load(cls, folder: Path, chunks: list[ChunkRecord]) -> BM25Index | None:
        """The index saved in `folder` for exactly these chunks, memory-mapped; None if absent.

        The score matrix stays on disk (mapped read-only), so every worker shares one copy in
        the page cache instead of each tokenizing and indexing every chunk itself.
        """
        import bm25s

        try:
            meta = json.loads((folder / KEYWORD_META).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("keyword index in %s is unreadable (%s); rebuilding it", folder, exc)
            return None
        if meta.get("tokenizer") != TOKENIZER or meta.get("n_chunks") != len(chunks):
            return None
        try:
            retriever = bm25s.BM25.load(folder, mmap=True, show_progress=False, **_FILES)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("keyword index in %s is unreadable (%s); rebuilding it", folder, exc)
            return None
        if int(retriever.scores["num_docs"]) != len(chunks):
            return None
        return cls(chunks, _retriever=retriever)

    def search(self, query: str, k: int) -> list[KeywordHit]:
        """Up to `k` chunks sharing terms with `query`, best first; [] when none match."""
        terms = tokenize(query)
        if not self.chunks or not terms or k < 1:
            return []
        with self._lock:
            scores = np.asarray(self._retriever.get_scores(terms), dtype=np.float32)
        order = np.argsort(-scores, kind="stable")[:k]
        return [KeywordHit(self.chunks[i], float(scores[i])) for i in order if scores[i] > 0]

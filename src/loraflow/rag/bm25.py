"""Keyword search over a store's chunks with bm25s; tokens suit both English and Chinese."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from loraflow.rag.store import ChunkRecord

log = logging.getLogger(__name__)

# Names the tokenizer below; a saved index made with another one is ignored (rebuilt).
TOKENIZER = "words+cjk-bigrams-1"
# The saved index's files, prefixed so they sit beside index.faiss and meta.json in a version
# folder. Layout 2: the score matrix as .npy arrays plus a sorted vocabulary (SortedVocab).
LAYOUT = 2
_DATA, _INDICES, _INDPTR = "bm25.data.npy", "bm25.indices.npy", "bm25.indptr.npy"
_VOCAB_BYTES, _VOCAB_OFFSETS = "bm25.vocab.bytes", "bm25.vocab.offsets.npy"
_VOCAB_IDS = "bm25.vocab.ids.npy"
# Layout 1 (no "layout" key): bm25s' own save, read by bm25s.
_BM25S_FILES = {
    "data_name": "bm25.data.npy",
    "indices_name": "bm25.indices.npy",
    "indptr_name": "bm25.indptr.npy",
    "vocab_name": "bm25.vocab.json",
    "params_name": "bm25.params.json",
    "nnoc_name": "bm25.nonoccurrence.npy",
}
KEYWORD_META = "bm25.loraflow.json"


class Vocab(Protocol):
    """Token → term id (a dict while building, a SortedVocab once mapped)."""

    def get(self, token: str, /) -> int | None: ...


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


class SortedVocab:
    """Token → term id over a sorted byte array on disk, memory-mapped: nothing is unpickled.

    bm25s keeps its vocabulary as a Python dict (about 100 bytes per term in every worker, more
    than the score matrix for Chinese text with its many bigrams). Here the tokens lie sorted
    in one file with an offsets array beside them; a lookup is a binary search touching a few
    pages, so a reader's memory grows only by the pages it reads, shared through the page cache.
    """

    def __init__(self, blob: np.ndarray, offsets: np.ndarray, ids: np.ndarray) -> None:
        self._blob, self._offsets, self._ids = blob, offsets, ids
        self._n = len(ids)

    @staticmethod
    def save(vocab: dict[str, int], folder: Path) -> None:
        keys = sorted((t.encode("utf-8"), i) for t, i in vocab.items())
        offsets = np.zeros(len(keys) + 1, dtype=np.int64)
        np.cumsum([len(k) for k, _ in keys], out=offsets[1:])
        (folder / _VOCAB_BYTES).write_bytes(b"".join(k for k, _ in keys))
        np.save(folder / _VOCAB_OFFSETS, offsets)
        np.save(folder / _VOCAB_IDS, np.asarray([i for _, i in keys], dtype=np.int64))

    def copy_to(self, folder: Path) -> None:
        (folder / _VOCAB_BYTES).write_bytes(self._blob.tobytes())
        np.save(folder / _VOCAB_OFFSETS, np.asarray(self._offsets))
        np.save(folder / _VOCAB_IDS, np.asarray(self._ids))

    @classmethod
    def load(cls, folder: Path) -> SortedVocab:
        offsets = np.load(folder / _VOCAB_OFFSETS, mmap_mode="r")
        ids = np.load(folder / _VOCAB_IDS, mmap_mode="r")
        size = (folder / _VOCAB_BYTES).stat().st_size
        if len(offsets) != len(ids) + 1 or int(offsets[-1]) != size or size == 0:
            raise ValueError("the vocabulary files disagree in length")
        blob = np.memmap(folder / _VOCAB_BYTES, dtype=np.uint8, mode="r")
        return cls(blob, offsets, ids)

    def _key(self, i: int) -> bytes:
        return self._blob[int(self._offsets[i]) : int(self._offsets[i + 1])].tobytes()

    def get(self, token: str) -> int | None:
        want = token.encode("utf-8")
        lo, hi = 0, self._n
        while lo < hi:
            mid = (lo + hi) // 2
            if self._key(mid) < want:
                lo = mid + 1
            else:
                hi = mid
        return int(self._ids[lo]) if lo < self._n and self._key(lo) == want else None


class BM25Index:
    """A BM25 index over a chunk snapshot; built by the writer, or loaded from its save.

    bm25s builds it (an eager, "lucene"-scored sparse matrix: one column of precomputed
    scores per term); querying sums the query terms' columns here, as bm25s' get_scores does,
    so the saved form can be mapped without bm25s' dict vocabulary.
    """

    def __init__(
        self,
        chunks: Sequence[ChunkRecord],
        _arrays: tuple[np.ndarray, np.ndarray, np.ndarray, Vocab] | None = None,
    ) -> None:
        self.chunks = chunks if _arrays is not None else list(chunks)
        if _arrays is None:
            _arrays = _build(self.chunks)
        self._data, self._indices, self._indptr, self._vocab = _arrays

    @property
    def mapped(self) -> bool:
        """True when the score matrix is read from the saved files (memory-mapped)."""
        return isinstance(self._data, np.memmap)

    def save(self, folder: Path) -> None:
        """Write the index files into `folder` (an empty index writes none)."""
        if not self.chunks:
            return
        np.save(folder / _DATA, np.asarray(self._data))
        np.save(folder / _INDICES, np.asarray(self._indices))
        np.save(folder / _INDPTR, np.asarray(self._indptr))
        if isinstance(self._vocab, SortedVocab):  # a mapped index saved again, unchanged
            self._vocab.copy_to(folder)
        else:
            SortedVocab.save(self._vocab, folder)  # type: ignore[arg-type]
        (folder / KEYWORD_META).write_text(
            json.dumps({"tokenizer": TOKENIZER, "layout": LAYOUT, "n_chunks": len(self.chunks)}),
            encoding="utf-8",
        )

    @classmethod
    def load(cls, folder: Path, chunks: Sequence[ChunkRecord]) -> BM25Index | None:
        """The index saved in `folder` for exactly these chunks, memory-mapped; None if absent.

        The score matrix and the vocabulary stay on disk (mapped read-only), so every worker
        shares one copy in the page cache instead of each tokenizing and indexing every chunk.
        """
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
            if meta.get("layout") == LAYOUT:
                data = np.load(folder / _DATA, mmap_mode="r")
                indices = np.load(folder / _INDICES, mmap_mode="r")
                indptr = np.load(folder / _INDPTR, mmap_mode="r")
                vocab: Vocab = SortedVocab.load(folder)
            else:
                data, indices, indptr, vocab = _load_bm25s(folder, len(chunks))
        except (OSError, ValueError, KeyError) as exc:
            log.warning("keyword index in %s is unreadable (%s); rebuilding it", folder, exc)
            return None
        if len(data) != len(indices) or int(indptr[-1]) != len(data):
            log.warning("keyword index in %s is damaged; rebuilding it", folder)
            return None
        return cls(chunks, _arrays=(data, indices, indptr, vocab))

    def search(self, query: str, k: int) -> list[KeywordHit]:
        """Up to `k` chunks sharing terms with `query`, best first; [] when none match."""
        terms = tokenize(query)
        if not self.chunks or not terms or k < 1:
            return []
        scores = np.zeros(len(self.chunks), dtype=np.float32)
        for token in terms:  # a repeated query term counts again, as in bm25s
            term = self._vocab.get(token)
            if term is None:
                continue
            start, end = int(self._indptr[term]), int(self._indptr[term + 1])
            # Rows are unique within a term's column, so fancy-index addition is exact.
            scores[self._indices[start:end]] += self._data[start:end]
        order = np.argsort(-scores, kind="stable")[:k]
        return [KeywordHit(self.chunks[i], float(scores[i])) for i in order if scores[i] > 0]


def _build(chunks: Sequence[ChunkRecord]) -> tuple[np.ndarray, np.ndarray, np.ndarray, Vocab]:
    import bm25s

    if not chunks:
        empty = np.zeros(0, dtype=np.float32)
        return empty, np.zeros(0, dtype=np.int32), np.zeros(1, dtype=np.int64), {}
    retriever = bm25s.BM25()
    corpus = [tokenize(c.text) or ["\u2205"] for c in chunks]
    retriever.index(corpus, show_progress=False)
    s = retriever.scores
    return s["data"], s["indices"], s["indptr"], dict(retriever.vocab_dict)


def _load_bm25s(folder: Path, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, Vocab]:
    # Versions saved before LAYOUT 2 hold bm25s' own files (a JSON vocabulary).
    import bm25s

    retriever = bm25s.BM25.load(folder, mmap=True, show_progress=False, **_BM25S_FILES)
    s = retriever.scores
    if int(s["num_docs"]) != n:
        raise ValueError(f"it indexes {s['num_docs']} chunks, not {n}")
    return s["data"], s["indices"], s["indptr"], retriever.vocab_dict

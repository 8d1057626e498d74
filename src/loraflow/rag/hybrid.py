"""Hybrid retrieval: vectors and BM25 fused by reciprocal rank, an optional reranker, quotes."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from loraflow.errors import InvalidInput, LoraflowError, ModelLoadError
from loraflow.rag.bm25 import BM25Index, tokenize
from loraflow.rag.embed import Embedder
from loraflow.rag.retrieve import RetrievedChunk
from loraflow.rag.store import ChunkRecord, FaissStore

Mode = Literal["hybrid", "vector", "bm25"]
MODES: tuple[str, ...] = ("hybrid", "vector", "bm25")
# The constant from Cormack et al. (2009); it damps the weight of the very first ranks.
RRF_K = 60
_SENTENCE_END = re.compile(r"(?<=[。！？；!?;.])\s+|(?<=[。！？；])|\n+")


class Reranker(Protocol):
    """Scores (query, passage) pairs; higher is more relevant."""

    def score(self, query: str, passages: list[str]) -> list[float]: ...


class CrossEncoderReranker:
    """A sentence-transformers cross-encoder loaded from a local folder (never a hub)."""

    def __init__(self, path: Path) -> None:
        from sentence_transformers import CrossEncoder

        if not Path(path).is_dir():
            raise ModelLoadError(
                f"RERANKER_MODEL={str(path)!r} is not a folder",
                hint="give a local cross-encoder folder, or leave RERANKER_MODEL empty",
            )
        try:
            self._model = CrossEncoder(str(path), device="cpu", local_files_only=True)
        except Exception as exc:  # transformers raises many types for a bad folder
            raise ModelLoadError(f"Could not load reranker {str(path)!r}: {exc}") from exc
        self._lock = threading.Lock()

    def score(self, query: str, passages: list[str]) -> list[float]:
        with self._lock:
            out = self._model.predict([(query, p) for p in passages], show_progress_bar=False)
        return [float(x) for x in out]


@dataclass
class _Fused:
    chunk: ChunkRecord
    score: float = 0.0
    vector_score: float | None = None
    bm25_score: float | None = None
    ranks: list[int] = field(default_factory=list)


def check_mode(mode: str) -> Mode:
    """The mode, or InvalidInput naming the allowed ones."""
    if mode not in MODES:
        raise InvalidInput(f"retrieval mode {mode!r} is unknown; use one of {', '.join(MODES)}")
    return mode  # type: ignore[return-value]


def search(
    query: str,
    embedder: Embedder,
    store: FaissStore,
    bm25: BM25Index | None,
    k: int,
    mode: str = "hybrid",
    reranker: Reranker | None = None,
    pool: int | None = None,
) -> list[RetrievedChunk]:
    """The `k` best chunks; never empty while the store holds chunks, whatever the mode."""
    check_mode(mode)
    if k < 1:
        raise InvalidInput(f"k={k!r} must be >= 1")
    if not query.strip():
        raise InvalidInput("The query is empty; ask a question with some text")
    if store.count_chunks() == 0:
        return []
    depth = max(pool or 0, k * 4, 20)
    fused: dict[int, _Fused] = {}
    if mode != "vector" and getattr(store, "hybrid_native", False):
        # The database fuses both rankings itself (Qdrant: one Query API call with RRF),
        # so no process holds a keyword index of the whole collection.
        vector = embedder.embed_query(query) if mode == "hybrid" else None
        for chunk, s in store.fused_search(vector, query, depth):  # type: ignore[attr-defined]
            fused[chunk.chunk_id] = _Fused(chunk, score=s, bm25_score=s if vector is None else None)
        if not fused and mode == "bm25":
            return search(query, embedder, store, bm25, k, "vector", reranker, pool)
        ranked = list(fused.values())  # already best first
        if reranker is not None and ranked:
            ranked = _rerank(query, ranked, reranker)
        return [_to_retrieved(item, query, mode) for item in ranked[:k]]
    if mode in ("hybrid", "vector"):
        for rank, hit in enumerate(store.search(embedder.embed_query(query), depth)):
            item = fused.setdefault(hit.chunk.chunk_id, _Fused(hit.chunk))
            item.vector_score = hit.score
            item.ranks.append(rank)
    if mode in ("hybrid", "bm25") and bm25 is not None:
        for rank, kw in enumerate(bm25.search(query, depth)):
            item = fused.setdefault(kw.chunk.chunk_id, _Fused(kw.chunk))
            item.bm25_score = kw.score
            item.ranks.append(rank)
    if not fused and mode == "bm25":
        # No shared term (a paraphrase, another script): the vector ranking still has the
        # chunks, and an empty context would make the model answer blind.
        return search(query, embedder, store, bm25, k, "vector", reranker, pool)
    # Scaled so that 1.0 means first in every ranking used (raw RRF sums are tiny numbers).
    best = (2 if mode == "hybrid" and bm25 is not None else 1) / (RRF_K + 1)
    for item in fused.values():
        item.score = sum(1.0 / (RRF_K + r + 1) for r in item.ranks) / best
    ranked = sorted(fused.values(), key=_fused_key(mode), reverse=True)
    if reranker is not None and ranked:
        ranked = _rerank(query, ranked, reranker)
    return [_to_retrieved(item, query, mode) for item in ranked[:k]]


def _fused_key(mode: str):  # noqa: ANN202 - a sort key
    if mode == "vector":
        return lambda f: f.vector_score or 0.0
    if mode == "bm25":
        return lambda f: f.bm25_score or 0.0
    return lambda f: f.score


def _rerank(query: str, ranked: list[_Fused], reranker: Reranker) -> list[_Fused]:
    # Reranking only reorders the fused pool; it never drops a chunk, so a reranker that
    # scores everything low cannot empty the context (a known failure of thresholded rerank).
    try:
        scores = reranker.score(query, [f.chunk.text for f in ranked])
    except LoraflowError:
        raise
    except Exception:  # a broken reranker must not cost the answer its context
        return ranked
    for item, s in zip(ranked, scores, strict=True):
        item.score = s
    return sorted(ranked, key=lambda f: f.score, reverse=True)


def _to_retrieved(item: _Fused, query: str, mode: str) -> RetrievedChunk:
    c = item.chunk
    score = {"vector": item.vector_score, "bm25": item.bm25_score}.get(mode, item.score)
    quote, q_start, q_end = best_span(query, c.text)
    return RetrievedChunk(
        text=c.text,
        source=c.source,
        doc_id=c.doc_id,
        position=c.position,
        score=float(score or 0.0),
        start=c.start,
        end=c.end,
        vector_score=item.vector_score,
        bm25_score=item.bm25_score,
        quote=quote,
        quote_start=c.start + q_start,
        quote_end=c.start + q_end,
    )


def best_span(query: str, text: str) -> tuple[str, int, int]:
    """The sentence of `text` sharing most query terms, with its offsets in `text`."""
    terms = set(tokenize(query))
    best: tuple[int, int, int] | None = None  # (overlap, start, end)
    pos = 0
    for piece in [*_SENTENCE_END.split(text)]:
        start = text.find(piece, pos) if piece else -1
        if start < 0 or not piece.strip():
            continue
        pos = start + len(piece)
        lead = len(piece) - len(piece.lstrip())
        s, e = start + lead, start + len(piece.rstrip())
        overlap = len(terms & set(tokenize(piece)))
        if best is None or overlap > best[0]:
            best = (overlap, s, e)
    if best is None:
        return text, 0, len(text)
    return text[best[1] : best[2]], best[1], best[2]

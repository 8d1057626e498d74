"""Find the stored chunks most relevant to a question."""

from __future__ import annotations

from dataclasses import dataclass

from loraflow.errors import InvalidInput
from loraflow.rag.embed import Embedder
from loraflow.rag.store import VectorStore


@dataclass
class RetrievedChunk:
    """A chunk of context with where it came from and its cosine similarity to the query."""

    text: str
    source: str
    doc_id: str
    position: int
    score: float
    start: int
    end: int
    # Filled by hybrid retrieval: each ranker's own score, and the best-matching sentence
    # with its character offsets in the document.
    vector_score: float | None = None
    bm25_score: float | None = None
    collection: str | None = None
    quote: str | None = None
    quote_start: int | None = None
    quote_end: int | None = None


def retrieve(query: str, embedder: Embedder, store: VectorStore, k: int) -> list[RetrievedChunk]:
    """The `k` chunks most similar to `query`, best first ([] for an empty store)."""
    if k < 1:
        raise InvalidInput(f"k={k!r} must be >= 1")
    if not query.strip():
        raise InvalidInput("The query is empty; ask a question with some text")
    if store.count_chunks() == 0:
        return []
    hits = store.search(embedder.embed_query(query), k)
    return [
        RetrievedChunk(
            text=h.chunk.text,
            source=h.chunk.source,
            doc_id=h.chunk.doc_id,
            position=h.chunk.position,
            score=h.score,
            start=h.chunk.start,
            end=h.chunk.end,
        )
        for h in hits
    ]

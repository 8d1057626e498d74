"""BM25 tokens, hybrid fusion, the never-empty rule, reranking and quoted spans."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraflow.errors import InvalidInput
from loraflow.rag.bm25 import BM25Index, tokenize
from loraflow.rag.embed import Embedder
from loraflow.rag.hybrid import best_span, search
from loraflow.rag.ingest import ingest_texts
from loraflow.rag.store import FaissStore

DOCS = [
    ("cats.md", "Cats sleep most of the day. A cat purrs when it is content."),
    ("deploy.md", "Blue-green deployment switches traffic at once. Canary sends 5% first."),
    ("zh.md", "模型在运行时可以切换。所有数据都保存在数据目录中。"),
    ("codes.md", "Error E4711 means the adapter checksum does not match its manifest."),
]


@pytest.fixture()
def store(tmp_path: Path, minilm: Embedder) -> FaissStore:
    s = FaissStore.open(tmp_path / "vs", minilm.name, minilm.dim)
    ingest_texts(DOCS, minilm, s, chunk_size=400, overlap=40)
    return s


def test_tokens_are_words_for_english_and_chars_plus_bigrams_for_chinese() -> None:
    assert tokenize("How do I switch the Model?") == ["switch", "model"]
    assert tokenize("数据目录") == ["数", "据", "目", "录", "数据", "据目", "目录"]


def test_bm25_finds_an_exact_code_that_vectors_rank_poorly(
    store: FaissStore, minilm: Embedder
) -> None:
    bm25 = BM25Index(store.chunks())
    hits = search("E4711", minilm, store, bm25, k=1, mode="bm25")
    assert hits[0].source == "codes.md" and hits[0].bm25_score and hits[0].bm25_score > 0
    fused = search("what does E4711 mean", minilm, store, bm25, k=1, mode="hybrid")
    assert fused[0].source == "codes.md"


def test_hybrid_scores_one_for_a_chunk_first_in_both_rankings(
    store: FaissStore, minilm: Embedder
) -> None:
    hits = search("cat purrs", minilm, store, BM25Index(store.chunks()), k=4)
    assert hits[0].source == "cats.md" and hits[0].score == pytest.approx(1.0)
    assert hits[0].vector_score is not None and hits[0].bm25_score is not None
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_bm25_with_no_shared_term_still_returns_context(
    store: FaissStore, minilm: Embedder
) -> None:
    # No word of the question occurs in any chunk; an empty context would be wrong.
    hits = search("feline naps", minilm, store, BM25Index(store.chunks()), k=2, mode="bm25")
    assert len(hits) == 2 and hits[0].source == "cats.md"


class _LowScorer:
    def score(self, query: str, passages: list[str]) -> list[float]:
        return [-100.0 + ("deploy" in p.lower()) - ("cat" in p.lower()) for p in passages]


class _Broken:
    def score(self, query: str, passages: list[str]) -> list[float]:
        raise RuntimeError("reranker crashed")


def test_a_reranker_reorders_but_never_empties_the_context(
    store: FaissStore, minilm: Embedder
) -> None:
    bm25 = BM25Index(store.chunks())
    hits = search("cat purrs", minilm, store, bm25, k=2, reranker=_LowScorer())
    assert len(hits) == 2 and hits[0].source == "deploy.md"
    kept = search("cat purrs", minilm, store, bm25, k=2, reranker=_Broken())
    assert kept[0].source == "cats.md"


def test_quote_is_the_best_matching_sentence_with_document_offsets(
    store: FaissStore, minilm: Embedder
) -> None:
    hit = search("数据保存在哪里", minilm, store, BM25Index(store.chunks()), k=1)[0]
    assert hit.source == "zh.md" and hit.quote == "所有数据都保存在数据目录中。"
    text = dict(DOCS)["zh.md"]
    assert text[hit.quote_start : hit.quote_end] == hit.quote
    assert best_span("canary", DOCS[1][1])[0] == "Canary sends 5% first."


def test_empty_store_gives_no_context_and_bad_input_is_refused(
    tmp_path: Path, minilm: Embedder, store: FaissStore
) -> None:
    empty = FaissStore.open(tmp_path / "empty", minilm.name, minilm.dim)
    assert search("anything", minilm, empty, BM25Index([]), k=3) == []
    with pytest.raises(InvalidInput, match="'fuzzy'"):
        search("q", minilm, store, None, k=3, mode="fuzzy")
    with pytest.raises(InvalidInput, match="empty"):
        search("  ", minilm, store, None, k=3)

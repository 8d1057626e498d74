"""Semantic triggers over a real FAISS index and the bundled MiniLM embedder."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from loraflow.memory.index import MemoryIndexes
from loraflow.rag.embed import Embedder, load_embedder
from tests.unit.memory.helpers import entry


@pytest.fixture(scope="module")
def minilm() -> Embedder:
    return load_embedder("bundled:minilm")


def test_similar_entry_is_found_and_index_follows_changes(tmp_path: Path, minilm: Embedder) -> None:
    ships = entry("Fleet", "The royal navy has forty warships and sails at dawn.", kind="world")
    bread = entry("Bakery", "The bakery sells warm bread and cakes every morning.", kind="world")
    indexes = MemoryIndexes(tmp_path)
    hits = indexes.search("p", [ships, bread], minilm, "The warships sailed out of port.", 1, 0.2)
    assert list(hits) == [ships.entry_id]

    # An edited entry is re-embedded; a superseded version leaves the index.
    edited = replace(ships, content="A quiet meadow full of sheep.")
    store = indexes.sync("p", [edited, bread], minilm)
    assert {d.doc_id for d in store.list_documents()} == {edited.id, bread.id}
    hits = indexes.search("p", [edited, bread], minilm, "The warships sailed out.", 2, 0.5)
    assert ships.entry_id not in hits

    # A fresh process reads the saved index instead of embedding again.
    reopened = MemoryIndexes(tmp_path).sync("p", [edited, bread], minilm)
    assert reopened.count_chunks() == 2


def test_min_similarity_filters_unrelated_entries(tmp_path: Path, minilm: Embedder) -> None:
    e = entry("Bakery", "The bakery sells warm bread.", kind="world")
    assert MemoryIndexes(tmp_path).search("p", [e], minilm, "quantum chromodynamics", 3, 0.6) == {}

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


@pytest.mark.parametrize("kind", ["faiss", "chroma", "qdrant"])
def test_indexes_follow_vector_store_and_rebuild_for_another_model(
    tmp_path: Path, minilm: Embedder, kind: str
) -> None:
    from loraflow.config import Settings
    from loraflow.rag.backends import chroma_folder, close_clients, index_name, qdrant_folder

    settings = Settings(data_dir=tmp_path, vector_store=kind, load_local_model=False)
    root = settings.data_path / "memory_index"
    ships = entry("Fleet", "The royal navy has forty warships and sails at dawn.", kind="world")
    bread = entry("Bakery", "The bakery sells warm bread and cakes every morning.", kind="world")
    try:
        indexes = MemoryIndexes(root, settings)
        hits = indexes.search("p", [ships, bread], minilm, "The warships sailed out.", 1, 0.2)
        assert list(hits) == [ships.entry_id]
        store = indexes.sync("p", [ships, bread], minilm)
        assert type(store).__name__ == {"faiss": "FaissStore", "chroma": "ChromaStore"}.get(
            kind, "QdrantStore"
        )
        # Only FAISS writes files under memory_index; the others keep a collection of their own.
        assert (root / "p").exists() == (kind == "faiss")
        if kind != "faiss":
            assert index_name(settings, root / "p") == "lf-memory_index-p"
            assert (
                chroma_folder(settings) if kind == "chroma" else qdrant_folder(settings)
            ).is_dir()

        # Another process (another embedder) finds an index of another model and rebuilds it.
        other = _Renamed(minilm, "other-model")
        again = MemoryIndexes(root, settings).sync("p", [ships, bread], other)
        assert again.embedding_name == "other-model" and again.count_chunks() == 2

        MemoryIndexes(root, settings).drop("p")
        assert MemoryIndexes(root, settings).sync("p", [], minilm).count_chunks() == 0
    finally:
        close_clients()


class _Renamed:
    """The same vectors under another model name, as a changed MEMORY_EMBEDDING_MODEL gives."""

    def __init__(self, inner: Embedder, name: str) -> None:
        self._inner, self.name, self.dim = inner, name, inner.dim

    def embed_documents(self, texts: list[str]):  # noqa: ANN201
        return self._inner.embed_documents(texts)

    def embed_query(self, text: str):  # noqa: ANN201
        return self._inner.embed_query(text)

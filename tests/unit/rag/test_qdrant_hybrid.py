"""Hybrid retrieval inside Qdrant (local mode): keyword vectors with IDF, one RRF query."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from qdrant_client import QdrantClient, models

from loraflow.config import Settings
from loraflow.errors import StoreError
from loraflow.rag import qdrant_store
from loraflow.rag.backends import close_clients, index_name, open_index, qdrant_folder
from loraflow.rag.bm25 import sparse_terms
from loraflow.rag.collections import CollectionInfo, Handle
from loraflow.rag.embed import Embedder
from loraflow.rag.hybrid import search
from loraflow.rag.ingest import ingest_texts
from loraflow.rag.qdrant_store import SPARSE, QdrantStore, _connect

DOCS = [
    ("cats.md", "Cats sleep most of the day. A cat purrs when it is content."),
    ("deploy.md", "Blue-green deployment switches traffic at once. Canary sends 5% first."),
    ("zh.md", "模型在运行时可以切换。所有数据都保存在数据目录中。"),
    ("codes.md", "Error E4711 means the adapter checksum does not match its manifest."),
]


@pytest.fixture()
def settings(tmp_path: Path) -> Iterator[Settings]:
    yield Settings(data_dir=tmp_path / "data", vector_store="qdrant")
    close_clients()


def _open(settings: Settings, minilm: Embedder) -> QdrantStore:
    store = open_index(settings, settings.vector_store_dir, minilm.name, minilm.dim)
    assert isinstance(store, QdrantStore)
    return store


def _handle(store: QdrantStore, minilm: Embedder) -> Handle:
    info = CollectionInfo("default", "default", minilm.name, 400, 40, "vs")
    return Handle(info, minilm, store, threading.Lock())


def test_chunks_get_keyword_vectors_with_qdrants_idf_modifier(
    settings: Settings, minilm: Embedder
) -> None:
    store = _open(settings, minilm)
    assert store.hybrid_native
    params = store._client.get_collection(store.name).config.params
    assert params.sparse_vectors[SPARSE].modifier == models.Modifier.IDF
    ingest_texts(DOCS, minilm, store, chunk_size=400, overlap=40)
    point = store._client.retrieve(store.name, ids=[0], with_vectors=True)[0]
    ids, values = sparse_terms(point.payload["text"])
    assert point.vector[SPARSE].indices == ids and point.vector[SPARSE].values == values


def _ingested(settings: Settings, minilm: Embedder) -> None:
    store = _open(settings, minilm)
    ingest_texts(DOCS, minilm, store, chunk_size=400, overlap=40)
    close_clients()  # the searches below run on a fresh client, like a new worker


def test_a_new_worker_runs_hybrid_as_one_rrf_query_without_scrolling(
    settings: Settings, minilm: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    _ingested(settings, minilm)
    calls: list[dict[str, Any]] = []
    real = QdrantClient.query_points

    def query_points(self: QdrantClient, *args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return real(self, *args, **kwargs)

    def scroll(self: QdrantClient, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the whole collection was scrolled")

    monkeypatch.setattr(QdrantClient, "scroll", scroll)
    monkeypatch.setattr(QdrantClient, "query_points", query_points)
    store = _open(settings, minilm)
    handle = _handle(store, minilm)
    assert handle.bm25() is None
    hits = search("what does E4711 mean", minilm, store, handle.bm25(), k=2, mode="hybrid")
    assert hits[0].source == "codes.md" and hits[0].quote.startswith("Error E4711")
    assert len(calls) == 1
    fused = calls[0]
    assert isinstance(fused["query"], models.FusionQuery)
    assert fused["query"].fusion == models.Fusion.RRF
    assert [p.using for p in fused["prefetch"]] == [None, SPARSE]
    zh = search("数据目录", minilm, store, None, k=1, mode="bm25")
    assert zh[0].source == "zh.md" and zh[0].bm25_score and zh[0].bm25_score > 0
    # No shared term: the never-empty rule still gives context (from the vectors).
    assert search("feline naps", minilm, store, None, k=2, mode="bm25")


def _dense_only(settings: Settings, minilm: Embedder) -> QdrantStore:
    """A collection as releases before keyword vectors made it, with the sample documents."""
    name = index_name(settings, settings.vector_store_dir)
    conn = _connect(qdrant_folder(settings), None, None)
    with conn.io:
        conn.client.create_collection(
            name,
            vectors_config=models.VectorParams(size=minilm.dim, distance=models.Distance.DOT),
        )
    store = _open(settings, minilm)
    assert not store.hybrid_native
    ingest_texts(DOCS, minilm, store, chunk_size=60, overlap=0)
    return store


def _no_scroll(store: QdrantStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*a: Any, **k: Any) -> Any:
        pytest.fail("the collection was scrolled")

    monkeypatch.setattr(store._client, "scroll", refuse)


def test_a_collection_without_keyword_vectors_refuses_hybrid_naming_the_migration(
    settings: Settings, minilm: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _dense_only(settings, minilm)
    _no_scroll(store, monkeypatch)
    with pytest.raises(StoreError, match="without keyword vectors") as caught:
        _handle(store, minilm).bm25()
    assert "loraflow kb migrate-sparse default" in (caught.value.hint or "")
    # Vector search goes on meanwhile, still without reading the whole collection.
    assert search("E4711 checksum", minilm, store, None, k=1, mode="vector")[0].source == (
        "codes.md"
    )


def test_migrate_sparse_adds_keyword_vectors_in_place_and_resumes_after_a_stop(
    settings: Settings, minilm: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _dense_only(settings, minilm)
    before = {
        p.id: (p.payload, p.vector)
        for p in store._client.scroll(store.name, limit=100, with_vectors=True)[0]
    }
    assert len(before) > 4
    monkeypatch.setattr(qdrant_store, "_PAGE", 2)
    real_upsert, calls = store._client.upsert, []

    def stop_on_third_page(coll: str, *a: Any, **k: Any) -> Any:
        calls.append(coll)
        if calls.count(coll) == 3 and coll.endswith(qdrant_store.MIGRATION_SUFFIX):
            raise RuntimeError("killed")
        return real_upsert(coll, *a, **k)

    monkeypatch.setattr(store._client, "upsert", stop_on_third_page)
    with pytest.raises(StoreError, match="killed"):
        store.migrate_sparse()
    monkeypatch.setattr(store._client, "upsert", real_upsert)
    seen: list[tuple[int, int]] = []
    assert store.migrate_sparse(lambda d, t: seen.append((d, t))) == len(before)
    # Resumed at the third page of the copy (2 pages done), then the copy back from 0.
    copy_total = len(before)
    assert seen[0] == (4, copy_total) and seen[-1] == (copy_total, copy_total)
    assert (0, copy_total) in seen
    assert store.hybrid_native
    assert not store._client.collection_exists(store.name + qdrant_store.MIGRATION_SUFFIX)
    params = store._client.get_collection(store.name).config.params
    assert params.sparse_vectors[SPARSE].modifier == models.Modifier.IDF
    after = store._client.scroll(store.name, limit=100, with_vectors=True)[0]
    assert len(after) == len(before)
    for p in after:
        payload, dense = before[p.id]
        assert p.payload == payload and p.vector[""] == dense
        ids, values = sparse_terms(p.payload["text"])
        assert p.vector[SPARSE].indices == ids and p.vector[SPARSE].values == values
    assert store.migrate_sparse() == 0  # nothing left to do
    _no_scroll(store, monkeypatch)
    assert _handle(store, minilm).bm25() is None
    hits = search("E4711", minilm, store, None, k=1, mode="bm25")
    assert hits[0].source == "codes.md"
    assert search("数据目录", minilm, store, None, k=1, mode="hybrid")[0].source == "zh.md"


def test_another_worker_notices_the_migration_without_reopening(
    settings: Settings, minilm: Embedder
) -> None:
    store = _dense_only(settings, minilm)
    other = QdrantStore(store.name, minilm.name, minilm.dim, None, store._conn)
    assert not other.hybrid_native
    store.migrate_sparse()
    assert _handle(other, minilm).bm25() is None and other.hybrid_native


def test_keyword_term_ids_are_stable_and_follow_the_bm25_tokenizer() -> None:
    ids, values = sparse_terms("数据目录 数据")
    # 4 characters + 3 bigrams, then 2 characters + 1 bigram repeated: 7 distinct terms.
    assert len(ids) == 7 and ids == sorted(ids) and all(0 <= i < 2**31 for i in ids)
    assert sparse_terms("数据目录 数据") == (ids, values)
    assert max(values) > min(values)  # repeated terms weigh more, saturating
    assert sparse_terms("the of and") == ([], [])

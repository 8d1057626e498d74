"""Large FAISS stores save an HNSW index tuned to recall@10 >= 0.95 against exact search."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from loraflow.rag import ann
from loraflow.rag.ann import RECALL_TARGET, build_hnsw, is_approximate, vectors_of
from loraflow.rag.store import DocumentInfo, FaissStore
from loraflow.rag.versioned_dir import current_version

DIM = 32


class _Piece:
    def __init__(self, text: str) -> None:
        self.text, self.start, self.end = text, 0, len(text)


def _vectors(n: int, seed: int) -> np.ndarray:
    # Clustered, like text embeddings: flat random vectors would make HNSW look too good.
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, DIM))
    v = centres[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, DIM))
    return v.astype(np.float32)


def _store(path: Path, n: int, threshold: int) -> FaissStore:
    store = FaissStore.open(path, "test", DIM, ann_threshold=threshold)
    for d in range(n // 100):
        doc = DocumentInfo(f"d{d}", f"d{d}.md", "sha", 0, 1, "")
        words = [f"word{d} item{i}" for i in range(100)]
        store.add_document(doc, [_Piece(w) for w in words], _vectors(100, d))
    store.save()
    return store


def _meta(path: Path) -> dict:
    folder = current_version(path)
    assert folder is not None
    return json.loads((folder / "meta.json").read_text())


def test_below_the_threshold_the_saved_index_stays_exact(tmp_path: Path) -> None:
    store = _store(tmp_path / "vs", 1000, threshold=5000)
    assert store.ann is None and "ann" not in _meta(tmp_path / "vs")
    assert _meta(tmp_path / "vs")["format_version"] == 1


def test_above_the_threshold_an_hnsw_index_is_saved_with_its_measured_recall(
    tmp_path: Path,
) -> None:
    _store(tmp_path / "vs", 3000, threshold=2000)
    ann = _meta(tmp_path / "vs")["ann"]
    assert ann["kind"] == "hnsw" and ann["recall_lower_bound"] >= RECALL_TARGET
    assert ann["recall_at_10"] >= ann["recall_lower_bound"]
    assert ann["ef_search"] >= 16 and ann["vectors"] == 3000
    reader = FaissStore.open(tmp_path / "vs", "test", DIM, ann_threshold=2000)
    assert reader.ann == ann and is_approximate(reader._index)
    assert faiss.downcast_index(reader._index.index).hnsw.efSearch == ann["ef_search"]
    # Recall of the loaded index on fresh queries, against exact search over the same vectors.
    exact = FaissStore.open(tmp_path / "vs", "test", DIM)
    exact._index = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
    ids, vecs = vectors_of(reader._index)
    exact._index.add_with_ids(vecs, ids)
    assert len(ids) == 3000
    rng = np.random.default_rng(7)
    queries = vecs[rng.choice(len(vecs), 50, replace=False)] + 0.05 * rng.normal(size=(50, DIM))
    found = 0
    for q in queries:
        want = {h.chunk.chunk_id for h in exact.search(q, 10)}
        found += len(want & {h.chunk.chunk_id for h in reader.search(q, 10)})
    assert found / 500 >= 0.9


def test_a_delete_edits_an_exact_copy_and_the_next_save_rebuilds_the_graph(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path / "vs", 3000, threshold=2000)
    assert is_approximate(store._index)
    with store.write_lock():
        store.delete_document("d0")
        assert store.ann is None and not is_approximate(store._index)
        assert all(h.chunk.doc_id != "d0" for h in store.search(_vectors(1, 0)[0], 20))
        store.save()
    assert is_approximate(store._index)
    meta = _meta(tmp_path / "vs")
    assert meta["ann"]["vectors"] == 2900 and len(meta["chunks"]) == 2900
    assert FaissStore.open(tmp_path / "vs", "test", DIM).count_chunks() == 2900


def test_ef_search_is_raised_until_the_recall_target_is_met(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A sparse graph over unstructured vectors: the first efSearch steps miss the target.
    monkeypatch.setattr(ann, "HNSW_M", 4)
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(4000, 128)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    _, params = build_hnsw(np.arange(4000, dtype=np.int64), vecs)
    assert params["m"] == 4 and params["ef_search"] > ann.EF_SEARCH_STEPS[0]
    assert params["recall_lower_bound"] >= RECALL_TARGET
    # One step of headroom past the first efSearch that met the target, both recorded.
    met = params["ef_search_target_met"]
    steps = ann.EF_SEARCH_STEPS
    assert params["ef_search"] == steps[min(steps.index(met) + 1, len(steps) - 1)]
    assert params["recall_at_10"] >= params["recall_at_10_target_met"] - 0.01

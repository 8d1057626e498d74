"""Large FAISS versions keep chunk records in mapped table files; integrity checks by stage."""

from __future__ import annotations

import json
from pathlib import Path

import bm25s
import numpy as np
import pytest

from loraflow.errors import StoreError
from loraflow.rag import store as store_mod
from loraflow.rag.chunk_table import TABLE_FILE, TEXT_FILE, ChunkTable
from loraflow.rag.chunking import Chunk
from loraflow.rag.store import DocumentInfo, FaissStore
from loraflow.rag.versioned_dir import current_version

DIM = 8
NAME = "test-model"
TEXTS = {
    "a.md": ["Cats purr when content.", "Dogs bark at the mail carrier."],
    "b.md": ["模型在运行时可以切换。", "所有数据都保存在数据目录中。", ""],
    "c.md": ["Error E4711 means the adapter checksum does not match."],
}


@pytest.fixture(autouse=True)
def _tables_always(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_mod, "INLINE_CHUNKS_MAX", 0)


def _add(store: FaissStore, source: str, texts: list[str], seed: int) -> None:
    vecs = np.random.default_rng(seed).random((len(texts), DIM), dtype=np.float32)
    doc = DocumentInfo(source, source, "sha", 0, sum(map(len, texts)), "2026-01-01")
    chunks = [Chunk(t, 3 * i, 3 * i + len(t)) for i, t in enumerate(texts)]
    store.add_document(doc, chunks, vecs)


def _written(path: Path) -> FaissStore:
    store = FaissStore.open(path, NAME, DIM)
    for seed, (source, texts) in enumerate(TEXTS.items()):
        _add(store, source, texts, seed)
    store.save()
    return store


def _folder(path: Path) -> Path:
    folder = current_version(path)
    assert folder is not None
    return folder


def test_a_large_version_keeps_its_records_out_of_meta_json_and_reads_them_back(
    tmp_path: Path,
) -> None:
    writer = _written(tmp_path / "vs")
    meta = json.loads((_folder(tmp_path / "vs") / "meta.json").read_text())
    assert "chunks" not in meta and meta["format_version"] == 3
    assert meta["records"]["n_chunks"] == 6
    reader = FaissStore.open(tmp_path / "vs", NAME, DIM)
    assert isinstance(reader._chunks, ChunkTable)
    assert reader.chunks() == writer.chunks()
    assert reader.list_documents() == writer.list_documents()
    assert reader.document_chunks("b.md") == writer.document_chunks("b.md")
    q = np.random.default_rng(1).random(DIM, dtype=np.float32)
    assert reader.search(q, 4) == writer.search(q, 4)
    assert reader.keyword_index().mapped
    hits = reader.keyword_index().search("E4711 checksum", 3)
    assert [h.chunk.source for h in hits] == ["c.md"]
    assert hits[0].chunk == writer.document_chunks("c.md")[0]


def test_changes_over_a_mapped_version_save_and_reload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _written(tmp_path / "vs")
    store = FaissStore.open(tmp_path / "vs", NAME, DIM)
    with store.write_lock():
        store.delete_document("a.md")
        _add(store, "d.md", ["zebra crossings are striped", "a second zebra"], 7)
        assert store.count_chunks() == 6
        assert [c.chunk_id for c in store.chunks()] == [2, 3, 4, 5, 6, 7]
        store.save()
    monkeypatch.setattr(bm25s.BM25, "index", lambda *a, **k: pytest.fail("reader rebuilt"))
    reader = FaissStore.open(tmp_path / "vs", NAME, DIM)
    assert reader.chunks() == store.chunks()
    assert [d.source for d in reader.list_documents()] == ["b.md", "c.md", "d.md"]
    assert [h.chunk.source for h in reader.keyword_index().search("zebra", 5)] == ["d.md"] * 2
    assert reader.keyword_index().search("cats", 5) == []


def test_a_truncated_or_swapped_index_fails_at_open(tmp_path: Path) -> None:
    _written(tmp_path / "vs")
    index = _folder(tmp_path / "vs") / "index.faiss"
    data = index.read_bytes()
    index.write_bytes(data[:-10])
    with pytest.raises(StoreError, match=r"index\.faiss' is damaged: it holds"):
        FaissStore.open(tmp_path / "vs", NAME, DIM)
    index.write_bytes(bytes([data[0] ^ 1]) + data[1:])
    with pytest.raises(StoreError, match=r"index\.faiss' is damaged: its checksum"):
        FaissStore.open(tmp_path / "vs", NAME, DIM)


def test_damage_inside_a_file_is_found_by_verify_before_any_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Readers check sizes and the index file's ends; the full checksums are the writer's.
    monkeypatch.setattr(store_mod, "_SAMPLE_BYTES", 16)
    _written(tmp_path / "vs")
    folder = _folder(tmp_path / "vs")
    for name in ("index.faiss", TEXT_FILE, TABLE_FILE):
        path = folder / name
        good = path.read_bytes()
        mid = len(good) // 2 + 3
        path.write_bytes(good[:mid] + bytes([good[mid] ^ 0x55]) + good[mid + 1 :])
        try:
            store = FaissStore.open(tmp_path / "vs", NAME, DIM)
        except StoreError as exc:  # a flipped table byte may already break a row
            assert name == TABLE_FILE, exc
            path.write_bytes(good)
            continue
        damaged = pytest.raises(StoreError, match=rf"{name}' is damaged: its checksum")
        with damaged, store.write_lock():
            pytest.fail("a writer started from a damaged version")
        with pytest.raises(StoreError, match="is damaged"):
            store.verify()
        path.write_bytes(good)
        FaissStore.open(tmp_path / "vs", NAME, DIM).verify()


def test_records_files_of_the_wrong_size_fail_at_open(tmp_path: Path) -> None:
    _written(tmp_path / "vs")
    text = _folder(tmp_path / "vs") / TEXT_FILE
    text.write_bytes(text.read_bytes() + b"x")
    with pytest.raises(StoreError, match=r"are damaged: chunks\.text holds"):
        FaissStore.open(tmp_path / "vs", NAME, DIM)


def test_small_versions_stay_in_meta_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_mod, "INLINE_CHUNKS_MAX", 10)
    _written(tmp_path / "vs")
    folder = _folder(tmp_path / "vs")
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["format_version"] == 1 and len(meta["chunks"]) == 6
    assert not (folder / TEXT_FILE).exists()
    assert isinstance(FaissStore.open(tmp_path / "vs", NAME, DIM)._chunks, dict)

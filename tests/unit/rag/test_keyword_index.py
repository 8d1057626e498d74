"""The keyword index published with each FAISS version: saved by the writer, mapped by readers."""

from __future__ import annotations

import json
from pathlib import Path

import bm25s
import numpy as np
import pytest

from loraflow.rag.bm25 import KEYWORD_META, BM25Index
from loraflow.rag.embed import Embedder
from loraflow.rag.hybrid import search
from loraflow.rag.ingest import ingest_texts
from loraflow.rag.store import DocumentInfo, FaissStore
from loraflow.rag.versioned_dir import current_version

DIM = 8
TEXTS = {
    "cats.md": ["Cats sleep most of the day.", "A cat purrs when it is content."],
    "deploy.md": ["Blue-green deployment switches traffic at once.", "Canary sends 5% first."],
    "zh.md": ["模型在运行时可以切换。", "所有数据都保存在数据目录中。", ""],
    "codes.md": ["Error E4711 means the adapter checksum does not match."],
}
QUERIES = ["cat purrs", "数据目录", "E4711 checksum", "canary deployment traffic", "模型切换"]


class _Piece:
    def __init__(self, text: str) -> None:
        self.text, self.start, self.end = text, 0, len(text)


def _add(store: FaissStore, source: str, texts: list[str], seed: int) -> None:
    vecs = np.random.default_rng(seed).random((len(texts), DIM), dtype=np.float32)
    doc = DocumentInfo(source, source, "sha", 0, sum(map(len, texts)), "")
    store.add_document(doc, [_Piece(t) for t in texts], vecs)


def _written(path: Path) -> FaissStore:
    store = FaissStore.open(path, "test", DIM)
    for seed, (source, texts) in enumerate(TEXTS.items()):
        _add(store, source, texts, seed)
    store.save()
    return store


def _hits(index: BM25Index, query: str) -> list[tuple[int, float]]:
    return [(h.chunk.chunk_id, h.score) for h in index.search(query, 10)]


def _refuse_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bm25s.BM25, "index", lambda *a, **k: pytest.fail("reader rebuilt"))


def test_a_save_publishes_the_keyword_index_beside_the_vectors(tmp_path: Path) -> None:
    _written(tmp_path / "vs")
    folder = current_version(tmp_path / "vs")
    assert folder is not None
    names = {p.name for p in folder.iterdir()}
    assert {"index.faiss", "meta.json", KEYWORD_META, "bm25.data.npy", "bm25.vocab.bytes"} <= names


def test_a_reader_maps_the_saved_index_and_scores_exactly_as_a_fresh_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = _written(tmp_path / "vs")
    fresh = BM25Index(writer.chunks())
    _refuse_builds(monkeypatch)
    reader = FaissStore.open(tmp_path / "vs", "test", DIM)
    loaded = reader.keyword_index()
    assert loaded.mapped
    assert reader.keyword_index() is loaded  # kept until the store changes
    for q in QUERIES:
        assert _hits(loaded, q) == _hits(fresh, q)
        assert _hits(loaded, q)  # every query matches something


def test_a_second_worker_follows_a_delete_without_rebuilding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = _written(tmp_path / "vs")
    reader = FaissStore.open(tmp_path / "vs", "test", DIM)
    assert {h.chunk.source for h in reader.keyword_index().search("cat", 5)} == {"cats.md"}
    with writer.write_lock():
        writer.delete_document("cats.md")
        writer.save()
    fresh = BM25Index(writer.chunks())
    _refuse_builds(monkeypatch)
    assert reader.refresh()
    after = reader.keyword_index()
    assert after.search("cat", 5) == []
    assert _hits(after, "数据目录") == _hits(fresh, "数据目录")


def test_an_older_version_without_a_keyword_index_is_built_lazily_then_saved(
    tmp_path: Path,
) -> None:
    _written(tmp_path / "vs")
    folder = current_version(tmp_path / "vs")
    assert folder is not None
    for p in folder.glob("bm25.*"):
        p.unlink()
    reader = FaissStore.open(tmp_path / "vs", "test", DIM)
    built = reader.keyword_index()
    assert not built.mapped
    assert [h.chunk.source for h in built.search("E4711", 3)] == ["codes.md"]
    with reader.write_lock():
        reader.save()  # the next writer publishes one
    new = current_version(tmp_path / "vs")
    assert new is not None and (new / KEYWORD_META).exists()


def test_a_saved_index_for_another_tokenizer_or_chunk_count_is_ignored(tmp_path: Path) -> None:
    _written(tmp_path / "vs")
    folder = current_version(tmp_path / "vs")
    assert folder is not None
    meta = json.loads((folder / KEYWORD_META).read_text())
    (folder / KEYWORD_META).write_text(json.dumps({**meta, "tokenizer": "other"}))
    chunks = FaissStore.open(tmp_path / "vs", "test", DIM).chunks()
    assert BM25Index.load(folder, chunks) is None
    (folder / KEYWORD_META).write_text(json.dumps(meta))
    assert BM25Index.load(folder, chunks[:-1]) is None
    assert BM25Index.load(folder, chunks) is not None


def test_unsaved_changes_get_an_index_of_their_own(tmp_path: Path) -> None:
    store = _written(tmp_path / "vs")
    before = store.keyword_index()
    _add(store, "new.md", ["zebra crossings are striped"], 9)
    after = store.keyword_index()
    assert after is not before
    assert [h.chunk.source for h in after.search("zebra", 3)] == ["new.md"]


def test_hybrid_results_are_the_same_with_the_published_index(
    tmp_path: Path, minilm: Embedder
) -> None:
    docs = [(s, " ".join(t)) for s, t in TEXTS.items()]
    writer = FaissStore.open(tmp_path / "vs", minilm.name, minilm.dim)
    ingest_texts(docs, minilm, writer, chunk_size=60, overlap=10)
    reader = FaissStore.open(tmp_path / "vs", minilm.name, minilm.dim)
    fresh = BM25Index(writer.chunks())
    for q in QUERIES:
        for mode in ("hybrid", "bm25"):
            a = search(q, minilm, reader, reader.keyword_index(), k=4, mode=mode)
            b = search(q, minilm, writer, fresh, k=4, mode=mode)
            assert a == b


def test_scores_equal_bm25s_own_and_the_mapped_vocabulary_finds_every_term(
    tmp_path: Path,
) -> None:
    from loraflow.rag.bm25 import SortedVocab, tokenize

    chunks = _written(tmp_path / "vs").chunks()
    retriever = bm25s.BM25()
    retriever.index([tokenize(c.text) or ["\u2205"] for c in chunks], show_progress=False)
    folder = current_version(tmp_path / "vs")
    assert folder is not None
    loaded = BM25Index.load(folder, chunks)
    assert loaded is not None and loaded.mapped
    for q in [*QUERIES, "cat cat purrs", "unknownword cat"]:
        want = retriever.get_scores(tokenize(q))
        got = {h.chunk.chunk_id: h.score for h in loaded.search(q, len(chunks))}
        assert got == {c.chunk_id: float(s) for c, s in zip(chunks, want, strict=True) if s > 0}
    vocab = SortedVocab.load(folder)
    for token, term in retriever.vocab_dict.items():
        assert vocab.get(token) == term
    assert vocab.get("zzz-not-a-term") is None


def test_a_version_saved_in_bm25s_own_layout_still_loads_mapped(tmp_path: Path) -> None:
    from loraflow.rag.bm25 import _BM25S_FILES, TOKENIZER, tokenize

    chunks = _written(tmp_path / "vs").chunks()
    folder = tmp_path / "old"
    folder.mkdir()
    retriever = bm25s.BM25()
    retriever.index([tokenize(c.text) or ["\u2205"] for c in chunks], show_progress=False)
    retriever.save(folder, show_progress=False, **_BM25S_FILES)
    meta = {"tokenizer": TOKENIZER, "n_chunks": len(chunks)}
    (folder / KEYWORD_META).write_text(json.dumps(meta))
    loaded = BM25Index.load(folder, chunks)
    assert loaded is not None and loaded.mapped
    fresh = BM25Index(chunks)
    for q in QUERIES:
        assert _hits(loaded, q) == _hits(fresh, q)

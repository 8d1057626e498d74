"""Ingest files or texts into a vector store: load, deduplicate, chunk, embed, save once."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np

from loraflow.errors import InvalidInput, LoraflowError, StoreError
from loraflow.rag.chunking import Chunk, check_chunk_params, split_text
from loraflow.rag.embed import Embedder
from loraflow.rag.loaders import iter_files, load_document
from loraflow.rag.store import DocumentInfo, VectorStore
from loraflow.safe_json import DEFAULT_LIMITS, JsonLimits

Progress = Callable[[str, int, int], None]
# Reads one entry's text lazily, so a failing file is caught and reported on its turn.
Reader = Callable[[], str]


@dataclass
class IngestReport:
    """What an ingest did; `added` includes new versions of `replaced` sources."""

    added: list[DocumentInfo] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class _Staged:
    doc: DocumentInfo
    chunks: list[Chunk]
    vectors: np.ndarray
    old_doc_id: str | None


def text_sha256(text: str) -> str:
    """Hex sha256 of the UTF-8 text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def make_doc_id(source: str, sha: str) -> str:
    """Stable id of one version of one source."""
    return hashlib.sha256(f"{source}\0{sha}".encode()).hexdigest()[:16]


def ingest_paths(
    paths: list[Path],
    embedder: Embedder,
    store: VectorStore,
    chunk_size: int,
    overlap: int,
    progress: Progress | None = None,
    sources: dict[Path, str] | None = None,
    batch_size: int = 64,
    json_limits: JsonLimits = DEFAULT_LIMITS,
) -> IngestReport:
    """Ingest files and folders; files that cannot be read are reported, not fatal."""
    report = IngestReport()
    entries: list[tuple[str, Reader]] = []
    seen: set[Path] = set()
    for raw in paths:
        p = Path(raw)
        try:
            files = iter_files([p])
        except LoraflowError as exc:
            report.failed.append((str(p), str(exc)))
            continue
        for f in files:
            if f.resolve() not in seen:
                seen.add(f.resolve())
                source = _source_for(f, p, sources)
                entries.append((source, partial(_read_file, f, source, json_limits)))
    return _ingest(entries, embedder, store, chunk_size, overlap, progress, batch_size, report)


def ingest_texts(
    items: list[tuple[str, str]],
    embedder: Embedder,
    store: VectorStore,
    chunk_size: int,
    overlap: int,
    progress: Progress | None = None,
    batch_size: int = 64,
) -> IngestReport:
    """Ingest (source, text) pairs, with the same deduplication as ingest_paths."""
    entries: list[tuple[str, Reader]] = [(s, partial(str, t)) for s, t in items]
    return _ingest(
        entries, embedder, store, chunk_size, overlap, progress, batch_size, IngestReport()
    )


def _read_file(path: Path, source: str, limits: JsonLimits) -> str:
    return load_document(path, source, limits).text


def _source_for(f: Path, given: Path, sources: dict[Path, str] | None) -> str:
    if sources:
        if f in sources:
            return sources[f]
        resolved = {Path(k).resolve(): v for k, v in sources.items()}
        if f.resolve() in resolved:
            return resolved[f.resolve()]
    if f != given:
        # Relative to the folder given, so re-ingesting one file of it (given alone, by
        # name) replaces the same document instead of adding a duplicate.
        return f.relative_to(given).as_posix()
    return f.name


def _ingest(
    entries: list[tuple[str, Reader]],
    embedder: Embedder,
    store: VectorStore,
    chunk_size: int,
    overlap: int,
    progress: Progress | None,
    batch_size: int,
    report: IngestReport,
) -> IngestReport:
    check_chunk_params(chunk_size, overlap)
    if embedder.dim != store.dim or embedder.name != store.embedding_name:
        raise StoreError(
            f"Embedder {embedder.name!r} (dim {embedder.dim}) does not match the store's "
            f"{store.embedding_name!r} (dim {store.dim})"
        )
    # Everything is embedded before the store is touched, so a failure here changes nothing.
    staged: dict[str, _Staged] = {}
    for done, (source, read) in enumerate(entries, start=1):
        try:
            text = read()
            if not text.strip():
                raise InvalidInput(f"{source!r} contains no text")
        except LoraflowError as exc:
            report.failed.append((source, str(exc)))
        else:
            _stage(source, text, embedder, store, chunk_size, overlap, batch_size, staged, report)
        if progress is not None:
            progress(source, done, len(entries))
    _apply(staged, store, report)
    return report


def _stage(
    source: str,
    text: str,
    embedder: Embedder,
    store: VectorStore,
    chunk_size: int,
    overlap: int,
    batch_size: int,
    staged: dict[str, _Staged],
    report: IngestReport,
) -> None:
    sha = text_sha256(text)
    existing = store.get_document_by_source(source)
    if existing is not None and existing.sha256 == sha:
        staged.pop(source, None)  # a later duplicate in this call restores the stored text
        if source not in report.unchanged:
            report.unchanged.append(source)
        return
    earlier = staged.get(source)
    if earlier is not None and earlier.doc.sha256 == sha:
        return  # the same content twice in one call
    chunks = split_text(text, chunk_size, overlap)
    vectors = _embed(embedder, [c.text for c in chunks], batch_size)
    doc = DocumentInfo(
        doc_id=make_doc_id(source, sha),
        source=source,
        sha256=sha,
        n_chunks=len(chunks),
        chars=len(text),
        added_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    old_id = existing.doc_id if existing is not None else None
    staged[source] = _Staged(doc, chunks, vectors, old_id)


def _embed(embedder: Embedder, texts: list[str], batch_size: int) -> np.ndarray:
    parts = [
        embedder.embed_documents(texts[i : i + batch_size])
        for i in range(0, len(texts), batch_size)
    ]
    if not parts:
        return np.zeros((0, embedder.dim), dtype=np.float32)
    return np.concatenate(parts, axis=0)


def _apply(staged: dict[str, _Staged], store: VectorStore, report: IngestReport) -> None:
    if not staged:
        return  # nothing changed, so the saved files are already current
    for item in staged.values():
        # Add before deleting the old version so concurrent searches never see neither.
        store.add_document(item.doc, item.chunks, item.vectors)
        report.added.append(item.doc)
        if item.old_doc_id is not None:
            store.delete_document(item.old_doc_id)
            report.replaced.append(item.doc.source)
    store.save()

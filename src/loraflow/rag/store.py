"""The vector store: document and chunk records plus a FAISS inner-product index on disk."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import faiss
import numpy as np

from loraflow.errors import DiskFull, InvalidInput, NotFound, StoreError, is_disk_full
from loraflow.locks import file_lock
from loraflow.rag.ann import build_hnsw, flat_of, is_approximate, set_ef_search, vectors_of
from loraflow.rag.versioned_dir import current_version, write_version

if TYPE_CHECKING:
    from loraflow.rag.bm25 import BM25Index

log = logging.getLogger(__name__)

# 2: the index may be an approximate (HNSW) one, described by meta["ann"]; 1 is always flat.
FORMAT_VERSION = 2
INDEX_FILE = "index.faiss"
WRITE_LOCK_FILE = ".write.lock"
META_FILE = "meta.json"


@dataclass
class DocumentInfo:
    """One ingested document."""

    doc_id: str
    source: str
    sha256: str
    n_chunks: int
    chars: int
    added_at: str


@dataclass
class ChunkRecord:
    """One stored chunk; `start`/`end` are character offsets into the document's text."""

    chunk_id: int
    doc_id: str
    source: str
    position: int
    text: str
    start: int
    end: int


@dataclass
class SearchHit:
    """A chunk with its cosine similarity to the query."""

    chunk: ChunkRecord
    score: float


class ChunkData(Protocol):
    """What add_document needs of a chunk (a chunking.Chunk or a ChunkRecord both fit)."""

    text: str
    start: int
    end: int


class VectorStore(Protocol):
    """Documents, their chunks and one vector per chunk, searchable by cosine similarity.

    Implemented by FaissStore (files) and, in their own modules, QdrantStore and ChromaStore;
    rag/backends.py picks one by VECTOR_STORE.
    """

    dim: int
    embedding_name: str

    def add_document(
        self, doc: DocumentInfo, chunks: list[ChunkData], vectors: np.ndarray
    ) -> DocumentInfo: ...

    def delete_document(self, doc_id: str) -> DocumentInfo: ...

    def list_documents(self) -> list[DocumentInfo]: ...

    def get_document(self, doc_id: str) -> DocumentInfo | None: ...

    def get_document_by_source(self, source: str) -> DocumentInfo | None: ...

    def search(self, query: np.ndarray, k: int) -> list[SearchHit]: ...

    def count_chunks(self) -> int: ...

    def chunks(self) -> list[ChunkRecord]: ...

    def document_chunks(self, doc_id: str) -> list[ChunkRecord]: ...

    @property
    def revision(self) -> tuple[int, int]: ...

    def save(self) -> None: ...

    def refresh(self) -> bool: ...

    def write_lock(self) -> AbstractContextManager[None]: ...


class FaissStore:
    """A VectorStore kept in memory and saved crash-safely to a folder."""

    def __init__(self, path: Path, embedding_name: str, dim: int, ann_threshold: int = 0) -> None:
        self.path = Path(path)
        self.embedding_name = embedding_name
        self.dim = int(dim)
        # Saves of at least this many vectors hold an HNSW index (0: always exact).
        self.ann_threshold = int(ann_threshold)
        # Parameters of the approximate index in use (None: exact search).
        self.ann: dict[str, Any] | None = None
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        self._docs: dict[str, DocumentInfo] = {}
        self._chunks: dict[int, ChunkRecord] = {}
        self._next_id = 0
        # Name of the saved version this memory state came from (None: never saved).
        self._version: str | None = None
        self._lock = threading.RLock()
        # Serialises whole saves so a later snapshot is never overwritten by an earlier one.
        self._save_lock = threading.Lock()
        self._write_lock = threading.RLock()
        # Bumped by every change and load; the keyword index is valid for one generation.
        self._generation = 0
        self._keyword: tuple[int, BM25Index] | None = None
        self._keyword_lock = threading.Lock()

    @classmethod
    def open(cls, path: Path, embedding_name: str, dim: int, ann_threshold: int = 0) -> FaissStore:
        """Load the store saved in `path`, or start an empty one if there is none yet."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise StoreError(f"Vector store path {str(path)!r} is a file, not a folder")
        store = cls(path, embedding_name, dim, ann_threshold)
        folder = current_version(path) if path.is_dir() else None
        if folder is None:
            if (path / INDEX_FILE).exists():
                raise StoreError(
                    f"{str(path)!r} holds an index.faiss in an unknown (older) layout",
                    hint="re-ingest into a new VECTOR_STORE_PATH, or delete that folder",
                )
            return store
        store._load(folder)
        store._version = folder.name
        return store

    @contextmanager
    def write_lock(self) -> Iterator[None]:
        """Exclusive across threads and processes for a read-modify-write; refreshes first.

        Without it two workers could both load version N, change it, and the second save
        would drop the first one's documents.
        """
        with self._write_lock, file_lock(self.path / WRITE_LOCK_FILE):
            self.refresh()
            yield

    def refresh(self) -> bool:
        """Reload if another process saved a newer version since; True when reloaded.

        Several server workers share one store folder: each checks the CURRENT pointer
        (one small file read) before reading or changing the store.
        """
        for attempt in range(3):
            folder = current_version(self.path) if self.path.is_dir() else None
            if folder is None or folder.name == self._version:
                return False
            try:
                with self._lock:
                    self._load(folder)
                    self._version = folder.name
                return True
            except StoreError:
                # The version we read was replaced and removed while loading: read again.
                if attempt == 2:
                    raise
        return False

    def _load(self, folder: Path) -> None:
        meta_path, index_path = folder / META_FILE, folder / INDEX_FILE
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            version = meta["format_version"]
            name, dim = meta["embedding_name"], int(meta["dim"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"Vector store file {str(meta_path)!r} is damaged: {exc}") from exc
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise StoreError(
                f"{str(meta_path)!r} has format version {version!r}; this loraflow reads "
                f"up to {FORMAT_VERSION}",
                hint="upgrade loraflow or re-ingest into a new VECTOR_STORE_PATH",
            )
        if name != self.embedding_name or dim != self.dim:
            raise StoreError(
                f"Vector store {str(self.path)!r} was built with embedding model {name!r} "
                f"(dim {dim}) but the configured model is {self.embedding_name!r} "
                f"(dim {self.dim})",
                hint=f"re-ingest into a new VECTOR_STORE_PATH, or switch back to {name!r}",
            )
        ann = meta.get("ann")
        try:
            docs = [DocumentInfo(**d) for d in meta["documents"]]
            chunks = [ChunkRecord(**c) for c in meta["chunks"]]
            next_id, want_sha = int(meta["next_chunk_id"]), meta["index_sha256"]
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"Vector store file {str(meta_path)!r} is damaged: {exc}") from exc
        try:
            data = index_path.read_bytes()
        except OSError as exc:
            raise StoreError(f"Vector store file {str(index_path)!r} is unreadable: {exc}") from exc
        if hashlib.sha256(data).hexdigest() != want_sha:
            raise StoreError(
                f"Vector store file {str(index_path)!r} is damaged: its checksum does not "
                f"match {META_FILE}"
            )
        try:
            index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except RuntimeError as exc:
            raise StoreError(f"Vector store file {str(index_path)!r} is damaged: {exc}") from exc
        ids = set(faiss.vector_to_array(index.id_map).tolist()) if index.ntotal else set()
        if index.d != self.dim or ids != {c.chunk_id for c in chunks}:
            raise StoreError(
                f"Vector store files in {str(folder)!r} disagree: {INDEX_FILE} has "
                f"{index.ntotal} vectors of dim {index.d}, {META_FILE} lists {len(chunks)} chunks"
            )
        from loraflow.rag.bm25 import BM25Index

        # Saved by the writer beside the vectors (older versions have none: built on demand).
        keyword = BM25Index.load(folder, chunks)
        if not is_approximate(index):
            ann = None
        elif ann is not None:
            set_ef_search(index, int(ann["ef_search"]))
        self._index = index
        self.ann = ann
        self._docs = {d.doc_id: d for d in docs}
        self._chunks = {c.chunk_id: c for c in chunks}
        self._next_id = max(next_id, max(self._chunks, default=-1) + 1)
        self._generation += 1
        self._keyword = (self._generation, keyword) if keyword is not None else None

    def add_document(
        self, doc: DocumentInfo, chunks: list[ChunkData], vectors: np.ndarray
    ) -> DocumentInfo:
        """Add a document with one vector per chunk; returns the stored record."""
        vecs = np.asarray(vectors, dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape != (len(chunks), self.dim):
            raise InvalidInput(
                f"vectors have shape {vecs.shape}; expected ({len(chunks)}, {self.dim}) "
                "for this document's chunks"
            )
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        vecs = np.ascontiguousarray(vecs / np.where(norms > 0, norms, 1.0), dtype=np.float32)
        with self._lock:
            if doc.doc_id in self._docs:
                raise InvalidInput(
                    f"Document {doc.doc_id!r} ({doc.source!r}) is already stored; delete it first"
                )
            stored = dataclasses.replace(doc, n_chunks=len(chunks))
            ids = np.arange(self._next_id, self._next_id + len(chunks), dtype=np.int64)
            records = [
                ChunkRecord(int(cid), doc.doc_id, doc.source, pos, c.text, c.start, c.end)
                for pos, (cid, c) in enumerate(zip(ids, chunks, strict=True))
            ]
            if len(records):
                self._editable().add_with_ids(vecs, ids)
            self._next_id += len(records)
            self._chunks.update((r.chunk_id, r) for r in records)
            self._docs[stored.doc_id] = stored
            self._generation += 1
            return stored

    def delete_document(self, doc_id: str) -> DocumentInfo:
        """Remove a document and its chunks; returns what was removed."""
        with self._lock:
            doc = self._docs.get(doc_id)
            if doc is None:
                raise NotFound(
                    f"No document with id {doc_id!r}; the store holds {len(self._docs)} "
                    "document(s)",
                    hint="list the documents to see their ids",
                )
            ids = [cid for cid, c in self._chunks.items() if c.doc_id == doc_id]
            if ids:
                self._editable().remove_ids(np.asarray(ids, dtype=np.int64))
            for cid in ids:
                del self._chunks[cid]
            del self._docs[doc_id]
            self._generation += 1
            return doc

    def list_documents(self) -> list[DocumentInfo]:
        """All documents, oldest first."""
        with self._lock:
            return list(self._docs.values())

    def get_document(self, doc_id: str) -> DocumentInfo | None:
        """The document with this id, if stored."""
        with self._lock:
            return self._docs.get(doc_id)

    def get_document_by_source(self, source: str) -> DocumentInfo | None:
        """The document ingested under this source name, if any."""
        with self._lock:
            return next((d for d in self._docs.values() if d.source == source), None)

    def count_chunks(self) -> int:
        """Number of stored chunks (= vectors)."""
        with self._lock:
            return len(self._chunks)

    @property
    def revision(self) -> tuple[int, int]:
        """Changes whenever chunks are added or removed (keys derived indexes such as BM25)."""
        with self._lock:
            return (self._next_id, len(self._chunks))

    def chunks(self) -> list[ChunkRecord]:
        """A snapshot of every stored chunk, in insertion order."""
        with self._lock:
            return list(self._chunks.values())

    def _editable(self) -> faiss.IndexIDMap2:
        # Called with self._lock held. Changes go to an exact copy; the next save rebuilds
        # the approximate index from it, so unsaved changes are searched exactly.
        if self.ann is not None:
            self._index, self.ann = flat_of(self._index), None
        return self._index

    def keyword_index(self) -> BM25Index:
        """The BM25 index of the current chunks: the saved one, or built once per change.

        A version saved by this loraflow carries its index (memory-mapped on load); only
        unsaved changes, or a version saved before keyword indexes were kept, build one here.
        """
        with self._lock:
            gen, cached = self._generation, self._keyword
            if cached is not None and cached[0] == gen:
                return cached[1]
            chunks = list(self._chunks.values())
        # Built outside the store lock so vector searches go on meanwhile.
        with self._keyword_lock:
            with self._lock:
                cached = self._keyword
            if cached is not None and cached[0] == gen:
                return cached[1]
            return self._build_keyword(gen, chunks)

    def _build_keyword(self, gen: int, chunks: list[ChunkRecord]) -> BM25Index:
        from loraflow.rag.bm25 import BM25Index

        built = BM25Index(chunks)
        with self._lock:
            if self._generation == gen:
                self._keyword = (gen, built)
        return built

    def document_chunks(self, doc_id: str) -> list[ChunkRecord]:
        """The chunks of one document, in position order."""
        with self._lock:
            found = [c for c in self._chunks.values() if c.doc_id == doc_id]
        return sorted(found, key=lambda c: c.position)

    def search(self, query: np.ndarray, k: int) -> list[SearchHit]:
        """The `k` chunks most similar to `query`, best first."""
        if k < 1:
            raise InvalidInput(f"k={k!r} must be >= 1")
        q = np.asarray(query, dtype=np.float32).reshape(1, -1)
        if q.shape[1] != self.dim:
            raise InvalidInput(f"query vector has dim {q.shape[1]}; this store uses {self.dim}")
        norm = float(np.linalg.norm(q))
        q = np.ascontiguousarray(q / norm if norm > 0 else q)
        with self._lock:
            if self._index.ntotal == 0:
                return []
            scores, ids = self._index.search(q, min(k, self._index.ntotal))
            return [
                SearchHit(chunk=self._chunks[int(cid)], score=float(s))
                for s, cid in zip(scores[0], ids[0], strict=True)
                if cid >= 0
            ]

    def save(self) -> None:
        """Write the current state to disk; a crash midway leaves the previous save intact."""
        with self._save_lock:
            with self._lock:
                gen = self._generation
                large = self.ann_threshold > 0 and self._index.ntotal >= self.ann_threshold
                vectors = vectors_of(self._index) if large and self.ann is None else None
            # Built outside the store lock: searches go on against the exact index meanwhile.
            built = build_hnsw(*vectors) if vectors is not None else None
            with self._lock:
                if built is None or self._generation != gen:
                    built = None
                    to_save, ann = self._index, self.ann
                else:
                    to_save, ann = built
                index_bytes = faiss.serialize_index(to_save).tobytes()
                meta = self._meta(hashlib.sha256(index_bytes).hexdigest(), ann)
                gen, cached = self._generation, self._keyword
                chunks = list(self._chunks.values())
            meta_bytes = json.dumps(meta, ensure_ascii=False).encode("utf-8")
            # The writer builds the keyword index once and publishes it with the vectors, so
            # readers and other workers map it instead of each rebuilding it from all chunks.
            keyword = (
                cached[1]
                if cached is not None and cached[0] == gen
                else self._build_keyword(gen, chunks)
            )
            try:
                final = write_version(
                    self.path,
                    {INDEX_FILE: index_bytes, META_FILE: meta_bytes},
                    extra=keyword.save,
                )
            except OSError as exc:
                # Memory holds changes the disk does not (disk full, say): go back to the
                # saved state, so what is served is what a restart would serve.
                try:
                    self._restore_saved()
                except Exception:  # the same failing disk; the save error is what to report
                    log.exception("could not reload the saved vector store after a failed save")
                raise (DiskFull if is_disk_full(exc) else StoreError)(
                    f"Could not save the vector store to {str(self.path)!r}: {exc}",
                    hint="the previously saved state is unchanged and still served; "
                    "free disk space and run the ingest again",
                ) from exc
            self._version = final.name
            if built is not None:
                with self._lock:
                    if self._generation == gen:
                        # Serve what readers serve, and drop the exact copy's memory.
                        self._index, self.ann = built

    def _restore_saved(self) -> None:
        folder = current_version(self.path) if self.path.is_dir() else None
        with self._lock:
            if folder is None:
                self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
                self.ann = None
                self._docs, self._chunks, self._next_id = {}, {}, 0
                self._generation += 1
            else:
                self._load(folder)
            self._version = folder.name if folder else None

    def _meta(self, index_sha: str, ann: dict[str, Any] | None = None) -> dict[str, Any]:
        extra = {} if ann is None else {"ann": ann}
        return {
            # Flat versions stay readable by releases that only know format 1.
            "format_version": FORMAT_VERSION if ann is not None else 1,
            **extra,
            "embedding_name": self.embedding_name,
            "dim": self.dim,
            "next_chunk_id": self._next_id,
            "index_sha256": index_sha,
            "documents": [dataclasses.asdict(d) for d in self._docs.values()],
            "chunks": [dataclasses.asdict(c) for c in self._chunks.values()],
        }

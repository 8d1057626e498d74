"""The vector store: document and chunk records plus a FAISS inner-product index on disk."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
from collections.abc import Iterator, MutableMapping
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
# 3: the chunk records lie in chunks.npy + chunks.text (rag/chunk_table.py), not meta.json.
FORMAT_VERSION = 3
INDEX_FILE = "index.faiss"
WRITE_LOCK_FILE = ".write.lock"
META_FILE = "meta.json"
# Saves with more chunks than this keep their records in the mapped table files (format 3),
# so opening them reads no record; smaller ones stay in meta.json, readable by older releases.
INLINE_CHUNKS_MAX = 10_000
# Readers check the index file's size and a digest of its first and last bytes; the full
# sha256 is checked by verify(), which every writer runs on the version it starts from.
_SAMPLE_BYTES = 1 << 20


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
        # A dict, or for a version saved with a records table, a ChunkTable read on demand.
        self._chunks: MutableMapping[int, ChunkRecord] = {}
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
        # The saved version whose full checksums verify() last confirmed.
        self._verified: str | None = None

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
            if self._version is not None and self._verified != self._version:
                self.verify()
            yield

    def verify(self) -> None:
        """Check the saved version in use against the full checksums its writer recorded.

        Opening a version checks sizes, a digest of the index file's ends and that the files
        agree; this reads every byte, so damage inside a file is found too. StoreError names
        the damaged file. Writers run it before changing a version.
        """
        from loraflow.rag.chunk_table import file_digest

        with self._lock:
            version = self._version
        if version is None:
            return
        folder = self.path / version
        try:
            meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
            want = {INDEX_FILE: meta["index_sha256"], **meta.get("records", {}).get("sha256", {})}
            bad = [name for name, digest in want.items() if file_digest(folder / name) != digest]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StoreError(f"Vector store version {str(folder)!r} is unreadable: {exc}") from exc
        if bad:
            raise StoreError(
                f"Vector store file {str(folder / bad[0])!r} is damaged: its checksum does not "
                f"match {META_FILE}",
                hint="restore the data dir from a backup, or re-ingest into a new "
                "VECTOR_STORE_PATH",
            )
        self._verified = version

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
        from loraflow.rag.chunk_table import ChunkTable

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
            next_id = int(meta["next_chunk_id"])
            chunks: MutableMapping[int, ChunkRecord]
            if "chunks" in meta:
                chunks = {c["chunk_id"]: ChunkRecord(**c) for c in meta["chunks"]}
                saved_ids = np.fromiter(chunks, dtype=np.int64, count=len(chunks))
            else:
                rec = meta["records"]
                pairs = [(d.doc_id, d.source) for d in docs]
                chunks = ChunkTable(folder, pairs, int(rec["n_chunks"]), int(rec["text_bytes"]))
                saved_ids = chunks.saved_ids
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"Vector store files in {str(folder)!r} are damaged: {exc}") from exc
        index = _read_index(index_path, meta)
        ids = faiss.vector_to_array(index.id_map) if index.ntotal else np.zeros(0, np.int64)
        if index.d != self.dim or not np.array_equal(np.sort(ids), np.sort(saved_ids)):
            raise StoreError(
                f"Vector store files in {str(folder)!r} disagree: {INDEX_FILE} has "
                f"{index.ntotal} vectors of dim {index.d}, {META_FILE} lists {len(chunks)} chunks"
            )
        from loraflow.rag.bm25 import BM25Index

        # Saved by the writer beside the vectors (older versions have none: built on demand).
        rows = chunks.rows() if isinstance(chunks, ChunkTable) else list(chunks.values())
        keyword = BM25Index.load(folder, rows)
        if not is_approximate(index):
            ann = None
        elif ann is not None:
            set_ef_search(index, int(ann["ef_search"]))
        self._index = index
        self.ann = ann
        self._docs = {d.doc_id: d for d in docs}
        self._chunks = chunks
        self._next_id = max(next_id, _max_id(chunks) + 1)
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
            ids = _ids_of(self._chunks, doc_id)
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
            found = [self._chunks[cid] for cid in _ids_of(self._chunks, doc_id)]
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
                gen, cached = self._generation, self._keyword
                chunks = list(self._chunks.values())
                meta, files = self._meta(index_bytes, ann, chunks)
            files[META_FILE] = json.dumps(meta, ensure_ascii=False).encode("utf-8")
            # The writer builds the keyword index once and publishes it with the vectors, so
            # readers and other workers map it instead of each rebuilding it from all chunks.
            keyword = (
                cached[1]
                if cached is not None and cached[0] == gen
                else self._build_keyword(gen, chunks)
            )
            try:
                final = write_version(self.path, files, extra=keyword.save)
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
            self._version = self._verified = final.name
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

    def _meta(
        self, index_bytes: bytes, ann: dict[str, Any] | None, chunks: list[ChunkRecord]
    ) -> tuple[dict[str, Any], dict[str, bytes]]:
        """meta.json's content and the version's files; called with self._lock held."""
        from loraflow.rag.chunk_table import TEXT_FILE, table_files

        files = {INDEX_FILE: index_bytes}
        meta: dict[str, Any] = {
            # Small flat versions stay readable by releases that only know format 1.
            "format_version": 1 if ann is None else 2,
            **({} if ann is None else {"ann": ann}),
            "embedding_name": self.embedding_name,
            "dim": self.dim,
            "next_chunk_id": self._next_id,
            "index_sha256": hashlib.sha256(index_bytes).hexdigest(),
            "index_size": len(index_bytes),
            "index_ends_sha256": _ends_digest(index_bytes),
            "documents": [dataclasses.asdict(d) for d in self._docs.values()],
        }
        if len(chunks) <= INLINE_CHUNKS_MAX:
            meta["chunks"] = [dataclasses.asdict(c) for c in chunks]
            return meta, files
        doc_index = {doc_id: i for i, doc_id in enumerate(self._docs)}
        table = table_files(chunks, doc_index)
        files.update(table)
        meta["format_version"] = FORMAT_VERSION
        meta["records"] = {
            "n_chunks": len(chunks),
            "text_bytes": len(table[TEXT_FILE]),
            "sha256": {name: hashlib.sha256(data).hexdigest() for name, data in table.items()},
        }
        return meta, files


def _ends_digest(data: bytes | bytearray | memoryview) -> str:
    """sha256 of a file's first and last _SAMPLE_BYTES (all of it when smaller)."""
    head = bytes(data[:_SAMPLE_BYTES])
    tail = bytes(data[max(_SAMPLE_BYTES, len(data) - _SAMPLE_BYTES) :])
    return hashlib.sha256(head + tail).hexdigest()


def _read_index(path: Path, meta: dict[str, Any]) -> faiss.IndexIDMap2:
    """The FAISS index file of a version, checked against meta.json before it is parsed.

    Versions written by this loraflow record the file's size and a digest of its ends: a
    truncated, swapped or half-copied file fails here at once, without hashing every byte
    (verify() does that, for writers). Older versions record only the full sha256.
    """
    damaged = f"Vector store file {str(path)!r} is damaged: its checksum does not match {META_FILE}"
    try:
        if "index_size" in meta:
            size = path.stat().st_size
            if size != int(meta["index_size"]):
                raise StoreError(
                    f"Vector store file {str(path)!r} is damaged: it holds {size} bytes, "
                    f"{META_FILE} says {meta['index_size']}"
                )
            with open(path, "rb") as fh:
                head = fh.read(_SAMPLE_BYTES)
                fh.seek(max(_SAMPLE_BYTES, size - _SAMPLE_BYTES))
                if _ends_digest(head + fh.read()) != meta["index_ends_sha256"]:
                    raise StoreError(damaged)
            return faiss.read_index(str(path))
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != meta["index_sha256"]:
            raise StoreError(damaged)
        return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    except StoreError:
        raise
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise StoreError(f"Vector store file {str(path)!r} is unreadable: {exc}") from exc
    except RuntimeError as exc:
        raise StoreError(f"Vector store file {str(path)!r} is damaged: {exc}") from exc


def _max_id(chunks: MutableMapping[int, ChunkRecord]) -> int:
    from loraflow.rag.chunk_table import ChunkTable

    if isinstance(chunks, ChunkTable):
        return chunks.max_id()
    return max(chunks, default=-1)


def _ids_of(chunks: MutableMapping[int, ChunkRecord], doc_id: str) -> list[int]:
    """The ids of one document's chunks (a ChunkTable finds them without reading texts)."""
    from loraflow.rag.chunk_table import ChunkTable

    if isinstance(chunks, ChunkTable):
        return chunks.ids_of(doc_id)
    return [cid for cid, c in chunks.items() if c.doc_id == doc_id]

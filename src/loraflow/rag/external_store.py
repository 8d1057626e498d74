"""Vector stores whose records live in a vector database (Qdrant, Chroma) instead of files.

The database holds, per index, two collections: the chunks (vector + chunk fields) and the
documents (one record each, plus a metadata record with the embedding model, the next ids
and a pending-change marker). Every change is stored when its call returns, so `save()` has
nothing left to do and `refresh()` nothing to reload.
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from loraflow.errors import InvalidInput, LoraflowError, NotFound, StoreError
from loraflow.locks import file_lock
from loraflow.rag.store import ChunkData, ChunkRecord, DocumentInfo, SearchHit

FORMAT_VERSION = 1
DOC_FIELDS = tuple(f.name for f in dataclasses.fields(DocumentInfo))
CHUNK_FIELDS = tuple(f.name for f in dataclasses.fields(ChunkRecord))


def unit_rows(vectors: np.ndarray, n: int, dim: int) -> np.ndarray:
    """`vectors` as float32 rows of length 1 (zero rows stay zero), checked to be (n, dim)."""
    vecs = np.asarray(vectors, dtype=np.float32)
    if vecs.ndim != 2 or vecs.shape != (n, dim):
        raise InvalidInput(
            f"vectors have shape {vecs.shape}; expected ({n}, {dim}) for this document's chunks"
        )
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    return np.ascontiguousarray(vecs / np.where(norms > 0, norms, 1.0), dtype=np.float32)


def unit_query(query: np.ndarray, dim: int) -> np.ndarray:
    """A query vector scaled to length 1, or InvalidInput when its dim is not the store's."""
    q = np.asarray(query, dtype=np.float32).reshape(-1)
    if q.shape[0] != dim:
        raise InvalidInput(f"query vector has dim {q.shape[0]}; this store uses {dim}")
    norm = float(np.linalg.norm(q))
    return q / norm if norm > 0 else q


def doc_from(fields: dict[str, Any]) -> DocumentInfo:
    """A DocumentInfo from a stored record (extra keys such as `seq` are dropped)."""
    return DocumentInfo(**{k: fields[k] for k in DOC_FIELDS})


def chunk_from(fields: dict[str, Any]) -> ChunkRecord:
    """A ChunkRecord from a stored record."""
    return ChunkRecord(**{k: fields[k] for k in CHUNK_FIELDS})


class ExternalStore(ABC):
    """A VectorStore kept in a vector database; subclasses supply its record operations.

    Scores are cosine similarities: vectors are scaled to length 1 before they are stored
    and searched by inner product, exactly as FaissStore does, so scores match across stores.
    """

    backend: ClassVar[str] = ""
    # Exceptions of the database client that mean "the store failed" rather than a bug.
    client_errors: ClassVar[tuple[type[BaseException], ...]] = ()

    def __init__(self, name: str, embedding_name: str, dim: int, lock_path: Path | None) -> None:
        self.name = name
        self.embedding_name = embedding_name
        self.dim = int(dim)
        self.lock_path = lock_path
        # Serialises this object's read-modify-write of the metadata record.
        self._lock = threading.RLock()
        self._write_lock = threading.RLock()

    @property
    def where(self) -> str:
        return f"{self.backend} collection {self.name!r}"

    # --- record operations of one database ----------------------------------------------
    @abstractmethod
    def _get_meta(self) -> dict[str, Any] | None: ...

    @abstractmethod
    def _put_meta(self, meta: dict[str, Any]) -> None: ...

    @abstractmethod
    def _put_chunks(self, records: list[ChunkRecord], vectors: np.ndarray) -> None: ...

    @abstractmethod
    def _delete_chunks(self, doc_id: str) -> None: ...

    @abstractmethod
    def _find_chunks(self, doc_id: str | None) -> list[ChunkRecord]:
        """The chunks of one document, or every chunk when `doc_id` is None (any order)."""

    @abstractmethod
    def _count_chunks(self) -> int: ...

    @abstractmethod
    def _query(self, query: np.ndarray, k: int) -> list[SearchHit]:
        """The `k` chunks of highest inner product with the unit vector `query`, best first."""

    @abstractmethod
    def _put_doc(self, fields: dict[str, Any]) -> None: ...

    @abstractmethod
    def _get_doc(self, doc_id: str) -> dict[str, Any] | None: ...

    @abstractmethod
    def _delete_doc(self, doc_id: str) -> None: ...

    @abstractmethod
    def _find_docs(self, source: str | None) -> list[dict[str, Any]]:
        """Document records (never the metadata record), all or those of one source."""

    @abstractmethod
    def _drop(self) -> None:
        """Delete both collections of this index."""

    # --- shared behaviour -----------------------------------------------------------------
    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Turn the database client's failures into a StoreError naming this collection."""
        try:
            yield
        except LoraflowError:
            raise
        except self.client_errors as exc:
            raise StoreError(f"{self.where}: {type(exc).__name__}: {exc}") from exc

    def _attach(self) -> None:
        """Check (or write, for a new index) the metadata record; called once when opened."""
        with self._guard():
            meta = self._get_meta()
            if meta is None:
                if self._count_chunks() or self._find_docs(None):
                    raise StoreError(
                        f"{self.where} holds records but no loraflow metadata record; it was "
                        "made by another tool or damaged",
                        hint="point VECTOR_STORE_PATH elsewhere, or delete that collection",
                    )
                meta = {
                    "format_version": FORMAT_VERSION,
                    "embedding_name": self.embedding_name,
                    "dim": self.dim,
                    "next_chunk_id": 0,
                    "next_doc_seq": 0,
                    "revision": 0,
                    "pending": "",
                }
                self._put_meta(meta)
        version, name, dim = meta.get("format_version"), meta.get("embedding_name"), meta.get("dim")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise StoreError(
                f"{self.where} has format version {version!r}; this loraflow reads up to "
                f"{FORMAT_VERSION}",
                hint="upgrade loraflow or re-ingest into a new VECTOR_STORE_PATH",
            )
        if name != self.embedding_name or dim != self.dim:
            raise StoreError(
                f"Vector store {self.where} was built with embedding model {name!r} "
                f"(dim {dim}) but the configured model is {self.embedding_name!r} "
                f"(dim {self.dim})",
                hint=f"re-ingest into a new VECTOR_STORE_PATH, or switch back to {name!r}",
            )

    def _meta(self) -> dict[str, Any]:
        meta = self._get_meta()
        if meta is None:
            raise StoreError(
                f"{self.where} lost its metadata record (was the collection deleted?)",
                hint="re-ingest the documents",
            )
        return meta

    def _changed(self, meta: dict[str, Any]) -> None:
        # A random token, not a counter: two processes bumping one counter at once could
        # both write N+1, and a reader that saw the first would miss the second change.
        meta.update(pending="", revision=secrets.randbits(62))
        self._put_meta(meta)

    @contextmanager
    def write_lock(self) -> Iterator[None]:
        """Exclusive across threads and processes sharing the lock file, for a read-modify-write.

        It also finishes what a writer killed midway left: chunks of a document whose record
        was never written (or was deleted) are removed.
        """
        locked = file_lock(self.lock_path) if self.lock_path is not None else nullcontext()
        with self._write_lock, locked:
            self._recover()
            yield

    def _recover(self) -> None:
        with self._lock, self._guard():
            meta = self._meta()
            pending = meta.get("pending")
            if pending:
                if self._get_doc(pending) is None:
                    self._delete_chunks(pending)
                self._changed(meta)

    def refresh(self) -> bool:
        """Nothing to reload: every read asks the database; always False."""
        return False

    def save(self) -> None:  # noqa: B027 - deliberately empty, not abstract
        """Nothing to do: each change is stored when its call returns."""

    def add_document(
        self, doc: DocumentInfo, chunks: list[ChunkData], vectors: np.ndarray
    ) -> DocumentInfo:
        """Add a document with one vector per chunk; returns the stored record."""
        vecs = unit_rows(vectors, len(chunks), self.dim)
        with self._lock, self._guard():
            if self._get_doc(doc.doc_id) is not None:
                raise InvalidInput(
                    f"Document {doc.doc_id!r} ({doc.source!r}) is already stored; delete it first"
                )
            meta = self._meta()
            first, seq = int(meta["next_chunk_id"]), int(meta["next_doc_seq"])
            # Ids are taken (and the document marked pending) before any chunk is written,
            # so a writer killed midway leaves chunks that write_lock() removes.
            meta.update(next_chunk_id=first + len(chunks), next_doc_seq=seq + 1, pending=doc.doc_id)
            self._put_meta(meta)
            records = [
                ChunkRecord(first + pos, doc.doc_id, doc.source, pos, c.text, c.start, c.end)
                for pos, c in enumerate(chunks)
            ]
            if records:
                self._put_chunks(records, vecs)
            stored = dataclasses.replace(doc, n_chunks=len(chunks))
            self._put_doc({**dataclasses.asdict(stored), "seq": seq})
            self._changed(meta)
            return stored

    def delete_document(self, doc_id: str) -> DocumentInfo:
        """Remove a document and its chunks; returns what was removed."""
        with self._lock, self._guard():
            found = self._get_doc(doc_id)
            if found is None:
                raise NotFound(
                    f"No document with id {doc_id!r}; the store holds "
                    f"{len(self._find_docs(None))} document(s)",
                    hint="list the documents to see their ids",
                )
            meta = self._meta()
            meta["pending"] = doc_id
            self._put_meta(meta)
            self._delete_doc(doc_id)
            self._delete_chunks(doc_id)
            self._changed(meta)
            return doc_from(found)

    def list_documents(self) -> list[DocumentInfo]:
        """All documents, oldest first."""
        with self._guard():
            found = self._find_docs(None)
        return [doc_from(d) for d in sorted(found, key=lambda d: d["seq"])]

    def get_document(self, doc_id: str) -> DocumentInfo | None:
        """The document with this id, if stored."""
        with self._guard():
            found = self._get_doc(doc_id)
        return doc_from(found) if found is not None else None

    def get_document_by_source(self, source: str) -> DocumentInfo | None:
        """The document ingested under this source name (the oldest, if several), if any."""
        with self._guard():
            found = self._find_docs(source)
        return doc_from(min(found, key=lambda d: d["seq"])) if found else None

    def count_chunks(self) -> int:
        """Number of stored chunks (= vectors)."""
        with self._guard():
            return self._count_chunks()

    @property
    def revision(self) -> tuple[int, int]:
        """Changes whenever chunks are added or removed (keys derived indexes such as BM25)."""
        with self._guard():
            meta = self._meta()
        return (int(meta["next_chunk_id"]), int(meta["revision"]))

    def chunks(self) -> list[ChunkRecord]:
        """A snapshot of every stored chunk, in insertion order."""
        with self._guard():
            found = self._find_chunks(None)
        return sorted(found, key=lambda c: c.chunk_id)

    def document_chunks(self, doc_id: str) -> list[ChunkRecord]:
        """The chunks of one document, in position order."""
        with self._guard():
            found = self._find_chunks(doc_id)
        return sorted(found, key=lambda c: c.position)

    def search(self, query: np.ndarray, k: int) -> list[SearchHit]:
        """The `k` chunks most similar to `query`, best first."""
        if k < 1:
            raise InvalidInput(f"k={k!r} must be >= 1")
        q = unit_query(query, self.dim)
        with self._guard():
            return self._query(q, k)

    def drop(self) -> None:
        """Delete this index from the database (both of its collections)."""
        with self._lock, self._guard():
            self._drop()

"""The vector store in Chroma: `chromadb.PersistentClient` folders inside the data dir.

Embeddings are always passed in: Chroma's default embedding function would download a model,
which fails offline, so every collection is opened with `embedding_function=None`.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from loraflow.errors import ConfigError, StoreError
from loraflow.rag.external_store import ExternalStore, chunk_from
from loraflow.rag.store import ChunkRecord, SearchHit

if TYPE_CHECKING:
    from chromadb.api import ClientAPI

INSTALL_HINT = "pip install 'loraflow[chroma]'"
# Document ids are hex digests, so this id can never be a document's.
_META_ID = "~loraflow-meta"
_PAGE = 2000
# Inner product on unit vectors: distance = 1 - cosine similarity.
_SPACE = {"hnsw:space": "ip"}


def _require() -> Any:
    try:
        import chromadb
    except ImportError as exc:
        raise ConfigError(
            "VECTOR_STORE=chroma needs the chromadb package, which is not installed",
            hint=INSTALL_HINT,
        ) from exc
    return chromadb


def _client_errors() -> tuple[type[BaseException], ...]:
    from chromadb.errors import ChromaError

    return (ValueError, RuntimeError, OSError, ChromaError)


# One client per folder and process, shared by every store in it (Chroma itself also
# keeps one system per folder; this keeps the settings in one place).
_CLIENTS: dict[str, ClientAPI] = {}
_CLIENTS_LOCK = threading.Lock()


def _connect(path: Path) -> ClientAPI:
    key = str(Path(path).expanduser().resolve())
    with _CLIENTS_LOCK:
        found = _CLIENTS.get(key)
        if found is not None:
            return found
        chromadb = _require()
        try:
            Path(key).mkdir(parents=True, exist_ok=True)
            client = chromadb.PersistentClient(
                path=key, settings=chromadb.Settings(anonymized_telemetry=False)
            )
        except _client_errors() as exc:
            raise StoreError(f"cannot open the Chroma folder {key!r}: {exc}") from exc
        _CLIENTS[key] = client
        return client


def close_clients() -> None:
    """Close every Chroma client this process opened, so the next open reads the folder again."""
    with _CLIENTS_LOCK:
        clients = list(_CLIENTS.values())
        _CLIENTS.clear()
    if not clients:
        return
    for client in clients:
        close = getattr(client, "close", None)  # chromadb >= 1.1
        if close is not None:
            close()
    from chromadb.api.client import SharedSystemClient

    SharedSystemClient.clear_system_cache()


class ChromaStore(ExternalStore):
    """A VectorStore in two Chroma collections: `<name>` (chunks) and `<name>-docs`."""

    backend = "Chroma"

    def __init__(
        self, name: str, embedding_name: str, dim: int, lock_path: Path | None, path: Path
    ) -> None:
        super().__init__(name, embedding_name, dim, lock_path)
        self.path = Path(path)
        self._client = _connect(path)
        self.client_errors = _client_errors()
        self._chunks: Any = None
        self._docs: Any = None

    @classmethod
    def open(
        cls,
        path: Path,
        name: str,
        embedding_name: str,
        dim: int,
        *,
        lock_path: Path | None = None,
    ) -> ChromaStore:
        """Open (or create) the index `name` in the Chroma folder `path`."""
        store = cls(name, embedding_name, dim, lock_path, path)
        with store._guard():
            store._chunks = store._collection(name)
            store._docs = store._collection(f"{name}-docs")
        store._attach()
        return store

    @property
    def where(self) -> str:
        return f"Chroma collection {self.name!r} (in {str(self.path)!r})"

    def _collection(self, name: str) -> Any:
        col = self._client.get_or_create_collection(
            name, metadata=dict(_SPACE), embedding_function=None
        )
        space = (col.metadata or {}).get("hnsw:space", "l2")
        if space != _SPACE["hnsw:space"]:
            raise StoreError(
                f"Chroma collection {name!r} measures {space!r} distance, not inner product; "
                "it was not made by loraflow",
                hint="point VECTOR_STORE_PATH elsewhere, or delete that collection",
            )
        return col

    def _pages(self, col: Any, where: dict[str, Any] | None, docs: bool) -> list[tuple]:
        include = ["metadatas", "documents"] if docs else ["metadatas"]
        out: list[tuple] = []
        offset = 0
        while True:
            got = col.get(where=where, include=include, limit=_PAGE, offset=offset)
            texts = got["documents"] if docs else [None] * len(got["ids"])
            out.extend(zip(got["metadatas"], texts, strict=True))
            if len(got["ids"]) < _PAGE:
                return out
            offset += _PAGE

    # --- record operations ------------------------------------------------------------------
    def _get_meta(self) -> dict[str, Any] | None:
        got = self._docs.get(ids=[_META_ID], include=["metadatas"])
        if not got["ids"]:
            return None
        meta = dict(got["metadatas"][0])
        return meta if meta.pop("kind", None) == "meta" else None

    def _put_meta(self, meta: dict[str, Any]) -> None:
        self._docs.upsert(ids=[_META_ID], embeddings=[[1.0]], metadatas=[{**meta, "kind": "meta"}])

    def _put_chunks(self, records: list[ChunkRecord], vectors: np.ndarray) -> None:
        batch = max(1, int(self._client.get_max_batch_size()))
        for i in range(0, len(records), batch):
            part = records[i : i + batch]
            self._chunks.upsert(
                ids=[str(r.chunk_id) for r in part],
                embeddings=vectors[i : i + batch],
                documents=[r.text for r in part],
                metadatas=[
                    {
                        "chunk_id": r.chunk_id,
                        "doc_id": r.doc_id,
                        "source": r.source,
                        "position": r.position,
                        "start": r.start,
                        "end": r.end,
                    }
                    for r in part
                ],
            )

    def _delete_chunks(self, doc_id: str) -> None:
        self._chunks.delete(where={"doc_id": doc_id})

    def _find_chunks(self, doc_id: str | None) -> list[ChunkRecord]:
        where = {"doc_id": doc_id} if doc_id is not None else None
        return [chunk_from({**m, "text": t}) for m, t in self._pages(self._chunks, where, True)]

    def _count_chunks(self) -> int:
        return int(self._chunks.count())

    def _query(self, query: np.ndarray, k: int) -> list[SearchHit]:
        n = min(k, self._count_chunks())
        if n == 0:
            return []
        got = self._chunks.query(
            query_embeddings=[query],
            n_results=n,
            include=["metadatas", "documents", "distances"],
        )
        return [
            SearchHit(chunk=chunk_from({**m, "text": t}), score=1.0 - float(d))
            for m, t, d in zip(
                got["metadatas"][0], got["documents"][0], got["distances"][0], strict=True
            )
            # A point another thread is still writing can come back without its metadata.
            if m is not None and t is not None
        ]

    def _put_doc(self, fields: dict[str, Any]) -> None:
        self._docs.upsert(
            ids=[fields["doc_id"]], embeddings=[[1.0]], metadatas=[{**fields, "kind": "doc"}]
        )

    def _get_doc(self, doc_id: str) -> dict[str, Any] | None:
        got = self._docs.get(ids=[doc_id], include=["metadatas"])
        if not got["ids"] or got["metadatas"][0].get("kind") != "doc":
            return None
        return dict(got["metadatas"][0])

    def _delete_doc(self, doc_id: str) -> None:
        self._docs.delete(ids=[doc_id])

    def _find_docs(self, source: str | None) -> list[dict[str, Any]]:
        where: dict[str, Any] = {"kind": "doc"}
        if source is not None:
            where = {"$and": [{"kind": "doc"}, {"source": source}]}
        return [dict(m) for m, _ in self._pages(self._docs, where, False)]

    def _drop(self) -> None:
        drop_collections(self._client, self.name)


def drop_collections(client: ClientAPI, name: str) -> None:
    """Delete the chunk and document collections of index `name`, if they exist."""
    import chromadb.errors

    missing = getattr(chromadb.errors, "NotFoundError", ValueError)
    for coll in (name, f"{name}-docs"):
        with contextlib.suppress(missing, ValueError):  # ValueError: older chromadb
            client.delete_collection(coll)


def drop_index(path: Path, name: str) -> None:
    """Delete index `name` from the Chroma folder `path`."""
    try:
        drop_collections(_connect(path), name)
    except _client_errors() as exc:
        raise StoreError(f"could not delete Chroma collection {name!r}: {exc}") from exc

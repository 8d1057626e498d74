"""The vector store in Qdrant: a server at QDRANT_URL, or Qdrant's local mode in the data dir."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from loraflow.errors import ConfigError, StoreError
from loraflow.rag.bm25 import sparse_terms
from loraflow.rag.external_store import ExternalStore, chunk_from, unit_query
from loraflow.rag.store import ChunkRecord, SearchHit

if TYPE_CHECKING:
    from qdrant_client import QdrantClient

INSTALL_HINT = "pip install 'loraflow[qdrant]'"
_NS = uuid.UUID("6b1c1f0e-3c59-4a53-9a64-2f4f1f0b9c11")
_META_ID = str(uuid.uuid5(_NS, "loraflow:meta"))
_PAGE = 1024
# The named sparse vector holding each chunk's keyword terms (Qdrant applies the IDF).
SPARSE = "keywords"
_BATCH = 256


def _require() -> Any:
    try:
        import qdrant_client
    except ImportError as exc:
        raise ConfigError(
            "VECTOR_STORE=qdrant needs the qdrant-client package, which is not installed",
            hint=INSTALL_HINT,
        ) from exc
    return qdrant_client


def _client_errors() -> tuple[type[BaseException], ...]:
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    return (ValueError, RuntimeError, OSError, UnexpectedResponse, ResponseHandlingException)


@dataclass
class _Connection:
    client: QdrantClient
    # Local mode keeps everything in plain Python structures without locks of its own.
    io: AbstractContextManager[Any]
    where: str


# One client per location and process: Qdrant's local mode locks its folder, so a second
# client on the same folder (the default store and a knowledge base, a CLI command run in
# the server's process) would be refused. Stores share the connection instead.
_CLIENTS: dict[str, _Connection] = {}
_CLIENTS_LOCK = threading.Lock()


def _connect(path: Path | None, url: str | None, api_key: str | None) -> _Connection:
    if (path is None) == (url is None):
        raise ConfigError("a Qdrant store needs exactly one of a local path or a server URL")
    key = url or str(Path(path).expanduser().resolve())  # type: ignore[arg-type]
    with _CLIENTS_LOCK:
        found = _CLIENTS.get(key)
        if found is not None:
            return found
        qc = _require()
        if url:
            client = qc.QdrantClient(url=url, api_key=api_key or None, timeout=60)
            conn = _Connection(client, nullcontext(), f"Qdrant at {url}")
            try:
                client.get_collections()
            except _client_errors() as exc:
                raise StoreError(
                    f"cannot reach Qdrant at {url!r}: {exc}",
                    hint="start the Qdrant server, fix QDRANT_URL / QDRANT_API_KEY, or unset "
                    "QDRANT_URL to keep vectors in the data dir",
                ) from exc
        else:
            folder = Path(key)
            try:
                folder.mkdir(parents=True, exist_ok=True)
                client = qc.QdrantClient(path=str(folder))
            except RuntimeError as exc:
                raise StoreError(
                    f"the Qdrant folder {key!r} is in use by another process",
                    hint="Qdrant's local mode serves one process; run one loraflow process, or "
                    "set QDRANT_URL to a Qdrant server that several processes can share",
                ) from exc
            except OSError as exc:
                raise StoreError(f"cannot open the Qdrant folder {key!r}: {exc}") from exc
            conn = _Connection(client, threading.RLock(), f"Qdrant folder {key}")
        _CLIENTS[key] = conn
        return conn


def close_clients() -> None:
    """Close every Qdrant client this process opened (local folders are unlocked)."""
    with _CLIENTS_LOCK:
        conns = list(_CLIENTS.values())
        _CLIENTS.clear()
    for conn in conns:
        with conn.io:
            conn.client.close()


def _doc_point(doc_id: str) -> str:
    return str(uuid.uuid5(_NS, f"doc:{doc_id}"))


class QdrantStore(ExternalStore):
    """A VectorStore in two Qdrant collections: `<name>` (chunks) and `<name>-docs`."""

    backend = "Qdrant"

    def __init__(
        self, name: str, embedding_name: str, dim: int, lock_path: Path | None, conn: _Connection
    ) -> None:
        super().__init__(name, embedding_name, dim, lock_path)
        self._conn = conn
        self._client = conn.client
        self._io = conn.io
        self.docs_name = f"{name}-docs"
        self.client_errors = _client_errors()
        from qdrant_client import models

        self._m = models
        self.hybrid_native = False

    @classmethod
    def open(
        cls,
        name: str,
        embedding_name: str,
        dim: int,
        *,
        path: Path | None = None,
        url: str | None = None,
        api_key: str | None = None,
        lock_path: Path | None = None,
    ) -> QdrantStore:
        """Open (or create) the index `name` in a local Qdrant folder or on a Qdrant server."""
        store = cls(name, embedding_name, dim, lock_path, _connect(path, url, api_key))
        with store._guard():
            store._ensure_collections(indexed=url is not None)
        store._attach()
        with store._guard(), store._io:
            params = store._client.get_collection(name).config.params
        size = params.vectors.size
        # Collections made before keyword vectors were stored fall back to an in-process
        # BM25 index (which reads every chunk); re-ingest them to get hybrid in Qdrant.
        store.hybrid_native = SPARSE in (params.sparse_vectors or {})
        if size != store.dim:
            raise StoreError(
                f"{store.where} holds vectors of dim {size}; its metadata says {store.dim}",
                hint="the collection was changed outside loraflow; re-ingest into a new "
                "VECTOR_STORE_PATH",
            )
        return store

    @property
    def where(self) -> str:
        return f"Qdrant collection {self.name!r} ({self._conn.where})"

    def _ensure_collections(self, indexed: bool) -> None:
        m = self._m
        for coll, size, keys in (
            (self.name, self.dim, ("doc_id",)),
            (self.docs_name, 1, ("kind", "source")),
        ):
            with self._io:
                if self._client.collection_exists(coll):
                    continue
                sparse = (
                    {SPARSE: m.SparseVectorParams(modifier=m.Modifier.IDF)}
                    if coll == self.name
                    else None
                )
                try:
                    self._client.create_collection(
                        coll,
                        vectors_config=m.VectorParams(size=size, distance=m.Distance.DOT),
                        sparse_vectors_config=sparse,
                    )
                except self.client_errors:
                    # Another process created it at the same moment: fine.
                    if not self._client.collection_exists(coll):
                        raise
                # Payload indexes make the doc_id / source filters fast on a server;
                # local mode scans anyway and would only warn about them.
                for key in keys if indexed else ():
                    self._client.create_payload_index(
                        coll, key, field_schema=m.PayloadSchemaType.KEYWORD
                    )

    def _match(self, **values: Any) -> Any:
        m = self._m
        return m.Filter(
            must=[m.FieldCondition(key=k, match=m.MatchValue(value=v)) for k, v in values.items()]
        )

    def _scroll(self, coll: str, flt: Any) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        offset = None
        while True:
            with self._io:
                points, offset = self._client.scroll(
                    coll,
                    scroll_filter=flt,
                    limit=_PAGE,
                    offset=offset,
                    with_payload=True,
                    with_vectors=False,
                )
            out.extend(dict(p.payload or {}) for p in points)
            if offset is None:
                return out

    def _retrieve(self, point_id: str) -> dict[str, Any] | None:
        with self._io:
            found = self._client.retrieve(self.docs_name, ids=[point_id], with_payload=True)
        return dict(found[0].payload or {}) if found else None

    # --- record operations ------------------------------------------------------------------
    def _get_meta(self) -> dict[str, Any] | None:
        found = self._retrieve(_META_ID)
        if found is None or found.pop("kind", None) != "meta":
            return None
        return found

    def _put_meta(self, meta: dict[str, Any]) -> None:
        point = self._m.PointStruct(id=_META_ID, vector=[1.0], payload={**meta, "kind": "meta"})
        with self._io:
            self._client.upsert(self.docs_name, points=[point], wait=True)

    def _put_chunks(self, records: list[ChunkRecord], vectors: np.ndarray) -> None:
        for i in range(0, len(records), _BATCH):
            part = records[i : i + _BATCH]
            dense = vectors[i : i + _BATCH].tolist()
            batch = self._m.Batch(
                ids=[r.chunk_id for r in part],
                vectors={"": dense, SPARSE: [self._sparse(r.text) for r in part]}
                if self.hybrid_native
                else dense,
                payloads=[dataclasses.asdict(r) for r in part],
            )
            with self._io:
                self._client.upsert(self.name, points=batch, wait=True)

    def _delete_chunks(self, doc_id: str) -> None:
        selector = self._m.FilterSelector(filter=self._match(doc_id=doc_id))
        with self._io:
            self._client.delete(self.name, points_selector=selector, wait=True)

    def _find_chunks(self, doc_id: str | None) -> list[ChunkRecord]:
        flt = self._match(doc_id=doc_id) if doc_id is not None else None
        return [chunk_from(p) for p in self._scroll(self.name, flt)]

    def _count_chunks(self) -> int:
        with self._io:
            return int(self._client.count(self.name, exact=True).count)

    def _query(self, query: np.ndarray, k: int) -> list[SearchHit]:
        with self._io:
            found = self._client.query_points(
                self.name, query=query.tolist(), limit=k, with_payload=True
            ).points
        return [SearchHit(chunk=chunk_from(p.payload or {}), score=float(p.score)) for p in found]

    def _sparse(self, text: str) -> Any:
        ids, values = sparse_terms(text)
        return self._m.SparseVector(indices=ids, values=values)

    def fused_search(
        self, query: np.ndarray | None, text: str, k: int
    ) -> list[tuple[ChunkRecord, float]]:
        """One Query API call: dense and keyword candidates fused by Qdrant's RRF.

        With `query` None, the keyword ranking alone (BM25 scores from Qdrant's IDF).
        """
        m = self._m
        keywords = self._sparse(text)
        if query is None:
            if not keywords.indices:
                return []
            request: dict[str, Any] = {"query": keywords, "using": SPARSE}
        else:
            dense = unit_query(query, self.dim).tolist()
            if not keywords.indices:
                request = {"query": dense}
            else:
                request = {
                    "prefetch": [
                        m.Prefetch(query=dense, limit=k),
                        m.Prefetch(query=keywords, using=SPARSE, limit=k),
                    ],
                    "query": m.FusionQuery(fusion=m.Fusion.RRF),
                }
        with self._guard(), self._io:
            found = self._client.query_points(
                self.name, limit=k, with_payload=True, **request
            ).points
        return [(chunk_from(p.payload or {}), float(p.score)) for p in found]

    def _put_doc(self, fields: dict[str, Any]) -> None:
        point = self._m.PointStruct(
            id=_doc_point(fields["doc_id"]), vector=[1.0], payload={**fields, "kind": "doc"}
        )
        with self._io:
            self._client.upsert(self.docs_name, points=[point], wait=True)

    def _get_doc(self, doc_id: str) -> dict[str, Any] | None:
        found = self._retrieve(_doc_point(doc_id))
        return found if found is not None and found.get("kind") == "doc" else None

    def _delete_doc(self, doc_id: str) -> None:
        selector = self._m.PointIdsList(points=[_doc_point(doc_id)])
        with self._io:
            self._client.delete(self.docs_name, points_selector=selector, wait=True)

    def _find_docs(self, source: str | None) -> list[dict[str, Any]]:
        if source is None:
            return self._scroll(self.docs_name, self._match(kind="doc"))
        flt = self._match(kind="doc", source=source)
        return self._scroll(self.docs_name, flt)

    def _drop(self) -> None:
        drop_collections(self._client, self._io, self.name)


def drop_collections(client: QdrantClient, io: AbstractContextManager[Any], name: str) -> None:
    """Delete the chunk and document collections of index `name`, if they exist."""
    with io:
        for coll in (name, f"{name}-docs"):
            if client.collection_exists(coll):
                client.delete_collection(coll)


def drop_index(
    name: str, *, path: Path | None = None, url: str | None = None, api_key: str | None = None
) -> None:
    """Delete index `name` from a local Qdrant folder or a Qdrant server."""
    conn = _connect(path, url, api_key)
    try:
        drop_collections(conn.client, conn.io, name)
    except _client_errors() as exc:
        raise StoreError(f"could not delete Qdrant collection {name!r}: {exc}") from exc

"""The vector store in Qdrant: a server at QDRANT_URL, or Qdrant's local mode in the data dir."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections.abc import Callable
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
# Where migrate_sparse() copies a dense-only collection's points with their keyword vectors.
MIGRATION_SUFFIX = "-sparse-migration"
# meta.json-like record key holding that migration's progress (phase, scroll offset, count).
_MIGRATION_KEY = "sparse_migration"


def migrate_command(name: str) -> str:
    """The command that adds keyword vectors to the Qdrant collection of knowledge base `name`."""
    return f"loraflow kb migrate-sparse {name}"


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
        self._indexed = False

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
        store._indexed = url is not None
        with store._guard():
            store._ensure_collections(indexed=url is not None)
        store._attach()
        with store._guard(), store._io:
            params = store._client.get_collection(name).config.params
        size = params.vectors.size
        # Collections made before keyword vectors were stored serve vector search only, until
        # migrate_sparse() adds them (collections.Handle.bm25 names the command).
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

    def check_keyword_vectors(self) -> bool:
        """Read the collection's config again (one call, no scroll): True once migrated."""
        if not self.hybrid_native:
            with self._guard(), self._io:
                params = self._client.get_collection(self.name).config.params
            self.hybrid_native = SPARSE in (params.sparse_vectors or {})
        return self.hybrid_native

    def migrate_sparse(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Give a collection made before keyword vectors were stored its keyword vectors.

        Qdrant cannot add a vector name to an existing collection, so the points are copied
        (dense vector, payload, new keyword vector) into `<name>-sparse-migration`, the
        collection is recreated with both vector kinds and the points are copied back. Progress
        is recorded after every page, so a run that was stopped resumes where it stopped.
        Holds the write lock throughout (ingests wait); queries fail while the collection is
        recreated. Returns the number of chunks in the migrated collection (0: nothing to do).
        """
        tmp = self.name + MIGRATION_SUFFIX
        with self.write_lock(), self._guard():
            meta = self._get_meta() or {}
            state = meta.get(_MIGRATION_KEY)
            if state is None and self.check_keyword_vectors():
                return 0
            if state is None:
                with self._io:
                    if self._client.collection_exists(tmp):  # left before any progress was saved
                        self._client.delete_collection(tmp)
                self._create_chunk_collection(tmp)
                state = {"phase": "copy", "offset": None, "done": 0}
            total = self._count_chunks() if state["phase"] == "copy" else self._count_in(tmp)
            if state["phase"] == "copy":
                state = self._copy_pages(self.name, tmp, state, total, progress, add_sparse=True)
                state = {"phase": "back", "offset": None, "done": 0}
                self._save_migration(state)
            with self._io:
                exists = self._client.collection_exists(self.name)
                params = self._client.get_collection(self.name).config.params if exists else None
            if params is None or SPARSE not in (params.sparse_vectors or {}):
                with self._io:
                    if exists:
                        self._client.delete_collection(self.name)
                self._create_chunk_collection(self.name)
            self._copy_pages(tmp, self.name, state, total, progress, add_sparse=False)
            with self._io:
                self._client.delete_collection(tmp)
            self._save_migration(None)
            self.hybrid_native = True
            return self._count_chunks()

    def _create_chunk_collection(self, coll: str) -> None:
        m = self._m
        with self._io:
            self._client.create_collection(
                coll,
                vectors_config=m.VectorParams(size=self.dim, distance=m.Distance.DOT),
                sparse_vectors_config={SPARSE: m.SparseVectorParams(modifier=m.Modifier.IDF)},
            )
            if self._indexed:
                self._client.create_payload_index(
                    coll, "doc_id", field_schema=m.PayloadSchemaType.KEYWORD
                )

    def _count_in(self, coll: str) -> int:
        with self._io:
            return int(self._client.count(coll, exact=True).count)

    def _save_migration(self, state: dict[str, Any] | None) -> None:
        meta = self._get_meta() or {}
        if state is None:
            meta.pop(_MIGRATION_KEY, None)
        else:
            meta[_MIGRATION_KEY] = state
        self._put_meta(meta)

    def _copy_pages(
        self,
        source: str,
        target: str,
        state: dict[str, Any],
        total: int,
        progress: Callable[[int, int], None] | None,
        add_sparse: bool,
    ) -> dict[str, Any]:
        offset, done = state["offset"], int(state["done"])
        while True:
            if progress is not None:
                progress(done, total)
            with self._io:
                points, offset = self._client.scroll(
                    source, limit=_PAGE, offset=offset, with_payload=True, with_vectors=True
                )
            if points:
                batch = []
                for p in points:
                    vec = p.vector
                    dense = vec.get("", vec) if isinstance(vec, dict) else vec
                    vectors: dict[str, Any] = {"": dense}
                    if add_sparse:
                        vectors[SPARSE] = self._sparse(str((p.payload or {}).get("text", "")))
                    elif isinstance(vec, dict) and SPARSE in vec:
                        vectors[SPARSE] = vec[SPARSE]
                    batch.append(self._m.PointStruct(id=p.id, vector=vectors, payload=p.payload))
                with self._io:
                    self._client.upsert(target, points=batch, wait=True)
                done += len(points)
            state = {**state, "offset": offset, "done": done}
            if offset is None:
                if progress is not None:
                    progress(done, total)
                return state
            self._save_migration(state)

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

"""Named knowledge bases: records in the database, open indexes and embedders kept per process."""

from __future__ import annotations

import builtins
import logging
import re
import shutil
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError

from loraflow import db
from loraflow.config import Settings
from loraflow.errors import Conflict, InvalidInput, LoraflowError, NotFound, StoreError
from loraflow.rag.backends import drop_index, open_index
from loraflow.rag.bm25 import BM25Index
from loraflow.rag.chunking import check_kb_chunking
from loraflow.rag.embed import Embedder, load_embedder
from loraflow.rag.hybrid import CrossEncoderReranker, Reranker
from loraflow.rag.store import VectorStore

log = logging.getLogger(__name__)
DEFAULT = "default"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
T = db.kb_collections


@dataclass
class CollectionInfo:
    """One knowledge base as stored; `default` is VECTOR_STORE_PATH with the global settings."""

    id: str
    name: str
    embedding_model: str
    chunk_size: int
    chunk_overlap: int
    index_dir: str
    reembed: dict[str, Any] | None = None
    created_at: str = ""
    is_default: bool = False


@dataclass
class Handle:
    """An open collection: its embedder, its vector store and a BM25 index kept in step."""

    info: CollectionInfo
    embedder: Embedder
    store: VectorStore
    # Serialises writers (ingest, delete, the last step of a re-embed) of this collection.
    lock: threading.Lock
    _bm25: BM25Index | None = None
    _bm25_rev: tuple[int, int] | None = None
    _bm25_lock: threading.Lock = field(default_factory=threading.Lock)

    def bm25(self) -> BM25Index | None:
        """The keyword index of the store's current chunks (rebuilt after a change).

        A FAISS store publishes its own with each version (built by the writer, mapped by
        readers); None when the database ranks keywords itself (Qdrant with keyword
        vectors); other stores get one built here from all their chunks. A Qdrant collection
        made before keyword vectors were stored is refused (building one here would read
        every chunk into this worker), naming the command that migrates it.
        """
        if getattr(self.store, "hybrid_native", False):
            return None
        check = getattr(self.store, "check_keyword_vectors", None)
        if check is not None:
            if check():  # migrated by another process since this one opened it
                return None
            from loraflow.rag.qdrant_store import migrate_command

            raise StoreError(
                f"knowledge base {self.info.name!r} is a Qdrant collection without keyword "
                "vectors, so hybrid and bm25 retrieval cannot run in Qdrant",
                hint=f"run `{migrate_command(self.info.name)}` once (resumable, shows "
                "progress); until then use retrieval mode 'vector'",
            )
        own = getattr(self.store, "keyword_index", None)
        if own is not None:
            return own()
        with self._bm25_lock:
            rev = self.store.revision
            if self._bm25 is None or rev != self._bm25_rev:
                self._bm25, self._bm25_rev = BM25Index(self.store.chunks()), rev
            return self._bm25


def check_name(name: str) -> str:
    """A collection or assistant name: letters, digits, '_', '-', '.', up to 64 characters."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidInput(
            f"name {name!r} is not allowed; use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return name


def index_folder(settings: Settings, index_dir: str) -> Path:
    """The folder an `index_dir` record names: relative ones lie in the data dir."""
    p = Path(index_dir).expanduser()
    return p if p.is_absolute() else settings.data_path / p


class KnowledgeBases:
    """All collections of one instance; handles are reopened when another process swapped one."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        default_embedder: Embedder,
        default_store: VectorStore,
        default_lock: threading.Lock,
    ) -> None:
        self.settings = settings
        self.db = engine
        self._embedders: dict[str, Embedder] = {}
        self._remember(settings.embedding_model, default_embedder)
        self._default = Handle(self._default_info(), default_embedder, default_store, default_lock)
        self._handles: dict[str, Handle] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._reranker: Reranker | None = None
        self.reranker_error: str | None = None

    # --- embedders ---------------------------------------------------------------------
    def _remember(self, spec: str, embedder: Embedder) -> None:
        self._embedders[spec.strip().lower()] = embedder
        self._embedders[embedder.name.lower()] = embedder

    def embedder(self, spec: str) -> Embedder:
        """A loaded embedder, shared by every collection that uses the same model."""
        key = spec.strip().lower()
        with self._lock:
            found = self._embedders.get(key)
        if found is not None:
            return found
        loaded = load_embedder(spec, device=self.settings.device, settings=self.settings)
        with self._lock:
            self._remember(spec, loaded)
        return loaded

    def reranker(self) -> Reranker | None:
        """The RERANKER_MODEL cross-encoder, loaded once; None when unset or unloadable."""
        spec = self.settings.reranker_model.strip()
        if not spec or self.reranker_error is not None:
            return None
        with self._lock:
            if self._reranker is None:
                try:
                    self._reranker = CrossEncoderReranker(Path(spec).expanduser())
                except LoraflowError as exc:
                    # Retrieval works without it; the reason shows in the collection listing.
                    self.reranker_error = str(exc)
                    return None
            return self._reranker

    # --- records -------------------------------------------------------------------------
    def _default_info(self) -> CollectionInfo:
        s = self.settings
        return CollectionInfo(
            id=DEFAULT,
            name=DEFAULT,
            embedding_model=s.embedding_model,
            chunk_size=s.chunk_size,
            chunk_overlap=s.chunk_overlap,
            index_dir=str(s.vector_store_dir),
            is_default=True,
        )

    @staticmethod
    def _row_info(row: Any) -> CollectionInfo:
        m = row._mapping
        created = m["created_at"]
        return CollectionInfo(
            id=m["id"],
            name=m["name"],
            embedding_model=m["embedding_model"],
            chunk_size=m["chunk_size"],
            chunk_overlap=m["chunk_overlap"],
            index_dir=m["index_dir"],
            reembed=m["reembed"],
            created_at=created.isoformat(timespec="seconds") if created else "",
        )

    def list(self) -> list[CollectionInfo]:
        """Every collection, the default first, then by name."""
        with self.db.connect() as conn:
            rows = conn.execute(select(T).order_by(T.c.name)).all()
        return [self._default_info(), *(self._row_info(r) for r in rows)]

    def names(self) -> builtins.list[str]:
        return [c.name for c in self.list()]

    def get(self, name: str) -> CollectionInfo:
        """The collection called `name`, or NotFound naming the known ones."""
        if name == DEFAULT:
            return self._default_info()
        with self.db.connect() as conn:
            row = conn.execute(select(T).where(T.c.name == name)).first()
        if row is None:
            known = ", ".join(repr(n) for n in self.names())
            raise NotFound(f"unknown collection {name!r}; known collections: {known}")
        return self._row_info(row)

    def index_path(self, info: CollectionInfo) -> Path:
        """Absolute folder of a collection's active (or a candidate) index."""
        return index_folder(self.settings, info.index_dir)

    def create(
        self, name: str, embedding_model: str | None, chunk_size: int | None, overlap: int | None
    ) -> CollectionInfo:
        """Record a new, empty collection; the embedding model is loaded first to prove it works."""
        check_name(name)
        if name == DEFAULT:
            raise Conflict(f"{DEFAULT!r} is the built-in collection (VECTOR_STORE_PATH)")
        model = (embedding_model or self.settings.embedding_model).strip()
        # Only a value left out takes the setting: 0 is refused like any other bad size.
        size = self.settings.chunk_size if chunk_size is None else chunk_size
        ov = self.settings.chunk_overlap if overlap is None else overlap
        check_kb_chunking(size, ov)
        self.embedder(model)
        cid = uuid.uuid4().hex
        values = {
            "id": cid,
            "name": name,
            "embedding_model": model,
            "chunk_size": size,
            "chunk_overlap": ov,
            "index_dir": f"collections/{cid}/index-1",
            "reembed": None,
            "created_at": datetime.now(UTC),
        }
        try:
            with self.db.begin() as conn:
                conn.execute(T.insert().values(**values))
        except IntegrityError as exc:
            raise Conflict(f"a collection named {name!r} already exists") from exc
        return self.get(name)

    def rename(self, name: str, new_name: str) -> CollectionInfo:
        """Change the name only; files are keyed by id, so nothing moves."""
        check_name(new_name)
        info = self.get(name)
        if info.is_default or new_name == DEFAULT:
            raise InvalidInput(f"the {DEFAULT!r} collection cannot be renamed or replaced")
        try:
            with self.db.begin() as conn:
                conn.execute(T.update().where(T.c.id == info.id).values(name=new_name))
        except IntegrityError as exc:
            raise Conflict(f"a collection named {new_name!r} already exists") from exc
        return self.get(new_name)

    def delete(self, name: str) -> CollectionInfo:
        """Remove the record, then the files of the collection."""
        info = self.get(name)
        if info.is_default:
            raise InvalidInput(
                f"the {DEFAULT!r} collection cannot be deleted; delete its documents instead"
            )
        with self.db.begin() as conn:
            conn.execute(T.delete().where(T.c.id == info.id))
        with self._lock:
            self._handles.pop(info.id, None)
        # With Qdrant / Chroma the vectors are collections named after the index folders.
        pending = (info.reembed or {}).get("index_dir")
        for index_dir in (info.index_dir, pending):
            if index_dir and self.settings.vector_store != "faiss":
                try:
                    drop_index(self.settings, self.index_path(with_index_dir(info, index_dir)))
                except LoraflowError as exc:
                    log.warning("collection %r: its vectors were not deleted: %s", name, exc)
        shutil.rmtree(self.settings.data_path / "collections" / info.id, ignore_errors=True)
        return info

    def set_reembed(self, cid: str, state: dict[str, Any] | None) -> None:
        with self.db.begin() as conn:
            conn.execute(T.update().where(T.c.id == cid).values(reembed=state))

    # --- open indexes --------------------------------------------------------------------
    def writer_lock(self, cid: str) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(cid, threading.Lock())

    def handle(self, name: str | None) -> Handle:
        """The open collection, current with its folder (other server processes write too)."""
        if not name or name == DEFAULT:
            self._default.store.refresh()
            return self._default
        info = self.get(name)
        with self._lock:
            cached = self._handles.get(info.id)
        if (
            cached is not None
            and cached.info.index_dir == info.index_dir
            and cached.info.embedding_model == info.embedding_model
        ):
            cached.info = info
            cached.store.refresh()
            return cached
        embedder = self.embedder(info.embedding_model)
        path = self.index_path(info)
        try:
            store = open_index(self.settings, path, embedder.name, embedder.dim)
        except StoreError as exc:
            raise StoreError(
                f"collection {info.name!r}: {exc.message}",
                hint=(
                    "vectors from different models are not comparable even at the same "
                    f"dimension; re-embed with `loraflow kb reembed {info.name} "
                    "--embedding-model MODEL`"
                ),
            ) from exc
        opened = Handle(info, embedder, store, self.writer_lock(info.id))
        with self._lock:
            self._handles[info.id] = opened
        return opened

    def swap(self, info: CollectionInfo, model: str, index_dir: str, handle: Handle) -> None:
        """Point the collection at a new index in one transaction, then in this process."""
        with self.db.begin() as conn:
            conn.execute(
                T.update()
                .where(T.c.id == info.id)
                .values(embedding_model=model, index_dir=index_dir, reembed=None)
            )
        handle.info = self.get(info.name)
        with self._lock:
            self._handles[info.id] = handle


def with_index_dir(info: CollectionInfo, index_dir: str) -> CollectionInfo:
    """A copy of `info` pointing at another index folder."""
    return CollectionInfo(**{**info.__dict__, "index_dir": index_dir})

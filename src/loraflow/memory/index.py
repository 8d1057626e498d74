"""Semantic triggers: one vector index per project over the current entries' text.

The index lives in the VECTOR_STORE backend (FAISS files, a Chroma or a Qdrant collection) like
the knowledge bases; it is derived from the database, so one built with another embedding model
is dropped and rebuilt rather than refused.
"""

from __future__ import annotations

import hashlib
import shutil
import threading
from pathlib import Path

from loraflow.config import Settings
from loraflow.errors import StoreError
from loraflow.memory.entries import MemoryEntry
from loraflow.rag.backends import drop_index, open_index
from loraflow.rag.embed import Embedder
from loraflow.rag.store import DocumentInfo, FaissStore, VectorStore
from loraflow.text import Chunk


def entry_text(entry: MemoryEntry) -> str:
    """What gets embedded for an entry: its title, keywords and content."""
    words = " ".join(k for k in entry.keywords if not k.startswith("/"))
    return f"{entry.title} {words}\n{entry.content}".strip()


class MemoryIndexes:
    """Per-project vector stores kept in step with the database on each search.

    With `settings` the stores follow its VECTOR_STORE; without, they are FAISS files.
    """

    def __init__(self, root: Path, settings: Settings | None = None) -> None:
        self.root = Path(root)
        self.settings = settings
        self._stores: dict[str, VectorStore] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock(self, project_id: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(project_id, threading.Lock())

    def _open(self, path: Path, embedder: Embedder) -> VectorStore:
        if self.settings is None:
            return FaissStore.open(path, embedder.name, embedder.dim)
        return open_index(self.settings, path, embedder.name, embedder.dim)

    def _drop(self, path: Path) -> None:
        if self.settings is None:
            shutil.rmtree(path, ignore_errors=True)
        else:
            drop_index(self.settings, path)

    def _store(self, project_id: str, embedder: Embedder) -> VectorStore:
        store = self._stores.get(project_id)
        if store is not None and store.embedding_name == embedder.name:
            return store
        path = self.root / project_id
        try:
            store = self._open(path, embedder)
        except StoreError:
            # The index is derived data: a damaged one, or one of another embedding model,
            # is rebuilt from the database rather than refused. A store that cannot be
            # reached fails the second open too, and says so.
            self._drop(path)
            store = self._open(path, embedder)
        self._stores[project_id] = store
        return store

    def sync(self, project_id: str, entries: list[MemoryEntry], embedder: Embedder) -> VectorStore:
        """Make the index hold exactly the current versions in `entries`; embed only new ones."""
        with self._lock(project_id):
            store = self._store(project_id, embedder)
            wanted = {e.id: e for e in entries if e.current}
            have = {d.doc_id: d for d in store.list_documents()}
            changed = False
            for doc_id, doc in have.items():
                # An in-place edit keeps the version id, so the text hash tells edits apart.
                e = wanted.get(doc_id)
                if e is None or doc.sha256 != _sha(entry_text(e)):
                    store.delete_document(doc_id)
                    changed = True
            missing = [e for i, e in wanted.items() if store.get_document(i) is None]
            if missing:
                texts = [entry_text(e) for e in missing]
                vectors = embedder.embed_documents(texts)
                for e, text, vec in zip(missing, texts, vectors, strict=True):
                    doc = DocumentInfo(e.id, e.entry_id, _sha(text), 1, len(text), e.updated_at)
                    store.add_document(doc, [Chunk(text, 0, len(text))], vec.reshape(1, -1))
                changed = True
            if changed:
                store.save()
            return store

    def search(
        self,
        project_id: str,
        entries: list[MemoryEntry],
        embedder: Embedder,
        text: str,
        k: int,
        min_score: float,
    ) -> dict[str, float]:
        """entry_id -> cosine similarity for the `k` entries closest to `text` above `min_score`."""
        if k < 1 or not text.strip() or not any(e.current for e in entries):
            return {}
        store = self.sync(project_id, entries, embedder)
        hits = store.search(embedder.embed_query(text), k)
        return {h.chunk.source: h.score for h in hits if h.score >= min_score}

    def drop(self, project_id: str) -> None:
        """Forget and delete a project's index."""
        with self._lock(project_id):
            self._stores.pop(project_id, None)
            self._drop(self.root / project_id)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()

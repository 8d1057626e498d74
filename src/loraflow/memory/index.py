"""Semantic triggers: one FAISS index per project over the current entries' text."""

from __future__ import annotations

import hashlib
import shutil
import threading
from pathlib import Path

from loraflow.errors import StoreError
from loraflow.memory.entries import MemoryEntry
from loraflow.rag.embed import Embedder
from loraflow.rag.store import DocumentInfo, FaissStore
from loraflow.text import Chunk


def entry_text(entry: MemoryEntry) -> str:
    """What gets embedded for an entry: its title, keywords and content."""
    words = " ".join(k for k in entry.keywords if not k.startswith("/"))
    return f"{entry.title} {words}\n{entry.content}".strip()


class MemoryIndexes:
    """Per-project FaissStores kept in step with the database on each search."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._stores: dict[str, FaissStore] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock(self, project_id: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(project_id, threading.Lock())

    def _store(self, project_id: str, embedder: Embedder) -> FaissStore:
        store = self._stores.get(project_id)
        if store is not None and store.embedding_name == embedder.name:
            return store
        path = self.root / project_id
        try:
            store = FaissStore.open(path, embedder.name, embedder.dim)
        except StoreError:
            # The index is derived data: a damaged one, or one of another embedding model,
            # is rebuilt from the database rather than refused.
            shutil.rmtree(path, ignore_errors=True)
            store = FaissStore(path, embedder.name, embedder.dim)
        self._stores[project_id] = store
        return store

    def sync(self, project_id: str, entries: list[MemoryEntry], embedder: Embedder) -> FaissStore:
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
            shutil.rmtree(self.root / project_id, ignore_errors=True)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()

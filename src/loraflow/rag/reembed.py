"""Safe re-embedding: build a new index beside the old one, checkpoint, swap atomically."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from loraflow.errors import InvalidInput
from loraflow.rag.backends import drop_index, open_index
from loraflow.rag.collections import CollectionInfo, Handle, KnowledgeBases, with_index_dir
from loraflow.rag.store import VectorStore

Progress = Callable[[int, int], None]


@dataclass
class ReembedReport:
    """What a finished re-embed did."""

    collection: str
    old_model: str
    new_model: str
    documents: int
    chunks: int
    resumed_documents: int
    seconds: float


def _next_index_dir(info: CollectionInfo) -> str:
    # index-<n> beside the active one; numbers only grow, so no folder is ever reused.
    parent, _, leaf = info.index_dir.rpartition("/")
    n = int(leaf.rsplit("-", 1)[-1]) if leaf.startswith("index-") else 1
    return f"{parent}/index-{n + 1}"


def reembed(
    kbs: KnowledgeBases,
    name: str,
    model: str,
    progress: Progress | None = None,
    checkpoint_every: int = 20,
) -> ReembedReport:
    """Re-embed every chunk of `name` with `model`; queries use the old index until the swap."""
    started = time.perf_counter()
    info = kbs.get(name)
    if info.is_default:
        raise InvalidInput(
            "the 'default' collection follows EMBEDDING_MODEL and VECTOR_STORE_PATH; "
            "create a named collection to change its embedding model at run time"
        )
    old = kbs.handle(name)
    # Loading first: a model that cannot load raises here and the old index keeps serving.
    new_embedder = kbs.embedder(model)
    if new_embedder.name == old.embedder.name:
        raise InvalidInput(f"collection {name!r} already uses embedding model {model!r}")
    pending = info.reembed or {}
    if pending.get("embedder_name") == new_embedder.name and pending.get("index_dir"):
        target_dir = pending["index_dir"]  # resume an interrupted run
    else:
        if pending.get("index_dir"):
            drop_index(kbs.settings, kbs.index_path(with_index_dir(info, pending["index_dir"])))
        target_dir = _next_index_dir(info)
    target = kbs.index_path(with_index_dir(info, target_dir))
    new_store = open_index(kbs.settings, target, new_embedder.name, new_embedder.dim)
    resumed = len(new_store.list_documents())
    state = {
        "embedding_model": model,
        "embedder_name": new_embedder.name,
        "index_dir": target_dir,
        "status": "running",
        "done": resumed,
        "total": len(old.store.list_documents()),
        "error": None,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    kbs.set_reembed(info.id, state)
    try:
        _copy_missing(old, new_store, new_embedder, state, kbs, info.id, progress, checkpoint_every)
        # Last pass under the writer lock: ingests and deletes made meanwhile are carried
        # over, and none can slip in between this pass and the swap.
        with old.lock, old.store.write_lock():
            _copy_missing(old, new_store, new_embedder, state, kbs, info.id, progress, 0)
            keep = {d.doc_id for d in old.store.list_documents()}
            for d in new_store.list_documents():
                if d.doc_id not in keep:
                    new_store.delete_document(d.doc_id)
            new_store.save()
            handle = Handle(info, new_embedder, new_store, old.lock)
            kbs.swap(info, model, target_dir, handle)
    except BaseException as exc:
        # The old index was never written to; the checkpoint lets the next call resume.
        state.update(status="interrupted", error=f"{type(exc).__name__}: {exc}")
        kbs.set_reembed(info.id, state)
        raise
    old_path = kbs.index_path(info)
    if old_path != target:
        drop_index(kbs.settings, old_path)
    return ReembedReport(
        collection=info.name,
        old_model=info.embedding_model,
        new_model=model,
        documents=len(new_store.list_documents()),
        chunks=new_store.count_chunks(),
        resumed_documents=resumed,
        seconds=round(time.perf_counter() - started, 2),
    )


def _copy_missing(
    old: Handle,
    new_store: VectorStore,
    embedder,  # noqa: ANN001 - an Embedder
    state: dict,
    kbs: KnowledgeBases,
    cid: str,
    progress: Progress | None,
    checkpoint_every: int,
) -> None:
    docs = old.store.list_documents()
    state["total"] = len(docs)
    since_save = 0
    for doc in docs:
        if new_store.get_document(doc.doc_id) is not None:
            continue
        chunks = old.store.document_chunks(doc.doc_id)
        if not chunks and doc.n_chunks:
            continue  # deleted while we were working; the last pass settles it
        vectors = embedder.embed_documents([c.text for c in chunks])
        new_store.add_document(doc, chunks, vectors)
        since_save += 1
        state["done"] = len(new_store.list_documents())
        if checkpoint_every and since_save >= checkpoint_every:
            new_store.save()
            since_save = 0
            kbs.set_reembed(cid, state)
        if progress is not None:
            progress(state["done"], state["total"])
    if since_save and checkpoint_every:
        new_store.save()
        kbs.set_reembed(cid, state)

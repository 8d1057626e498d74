"""Knowledge-base documents: ingest files and uploads, list, delete, seed the sample set."""

from __future__ import annotations

import logging
import re
import unicodedata
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any, BinaryIO

from loraflow.errors import InvalidInput, TooLarge, UnsupportedFile
from loraflow.rag.ingest import IngestReport, ingest_paths
from loraflow.rag.loaders import SUPPORTED_SUFFIXES
from loraflow.services.runtime import Runtime

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
_COPY_BLOCK = 1024 * 1024


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


def safe_filename(name: str) -> str:
    """A display name with no path parts or control characters (never used as a path)."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = unicodedata.normalize("NFC", base)
    base = "".join(ch for ch in base if ch.isprintable() and ch not in '<>:"|?*')
    base = base.strip().lstrip(".")
    return base[:200] or "upload"


def save_upload(rt: Runtime, filename: str, stream: BinaryIO) -> tuple[Path, str]:
    """Store an upload under a generated name inside the data dir, enforcing the size limit."""
    display = safe_filename(filename)
    suffix = Path(display).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise UnsupportedFile(
            f"{display!r} has type {suffix or '(none)'!r}; "
            f"supported: {', '.join(SUPPORTED_SUFFIXES)}"
        )
    limit = rt.settings.max_upload_bytes
    rt.settings.uploads_dir.mkdir(parents=True, exist_ok=True)
    name = f"{uuid.uuid4().hex}{suffix}"
    target = rt.settings.uploads_dir / name
    # Written under a staging name and renamed when whole, so a backup or a reader taking
    # the folder meanwhile never sees half an upload.
    partial = rt.settings.uploads_dir / f".tmp-{name}.partial"
    written = 0
    try:
        with open(partial, "wb") as out:
            while block := stream.read(_COPY_BLOCK):
                written += len(block)
                if written > limit:
                    raise TooLarge(
                        f"{display!r} is over the upload limit of {rt.settings.max_upload_mb:g} MB",
                        hint="raise MAX_UPLOAD_MB or split the file",
                    )
                out.write(block)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    if written == 0:
        partial.unlink(missing_ok=True)
        raise InvalidInput(f"{display!r} is empty")
    partial.replace(target)
    return target, display


def ingest_uploads(
    rt: Runtime,
    files: Iterable[tuple[str, BinaryIO]],
    ingest_fn: Callable[..., IngestReport] | None = None,
) -> IngestReport:
    """Save and ingest uploaded files (into the default store unless `ingest_fn` says where)."""
    saved: dict[Path, str] = {}
    try:
        for name, stream in files:
            path, display = save_upload(rt, name, stream)
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

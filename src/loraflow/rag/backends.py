"""Which database keeps an index's vectors: the VECTOR_STORE registry (faiss, qdrant, chroma).

An index is named by its folder (VECTOR_STORE_PATH, or a knowledge base's index folder). With
FAISS that folder holds the files; with Qdrant or Chroma it is turned into a collection name,
so every knowledge base (and every re-embedded index of it) gets a collection of its own.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from loraflow.config import Settings
from loraflow.rag.store import WRITE_LOCK_FILE, FaissStore, VectorStore

BACKENDS = ("faiss", "qdrant", "chroma")
_SLUG = re.compile(r"[^A-Za-z0-9_]+")
# Chroma allows 63 characters in older releases: "lf-" + 55 + "-docs" fits.
_MAX_SLUG = 55


def index_name(settings: Settings, path: Path) -> str:
    """The Qdrant / Chroma collection name of the index kept at `path`."""
    full = Path(path).expanduser().resolve()
    try:
        slug = _SLUG.sub("-", full.relative_to(settings.data_path).as_posix()).strip("-_")
    except ValueError:
        slug = ""  # outside the data dir: named by its absolute path below
    if not slug or len(slug) > _MAX_SLUG:
        digest = hashlib.sha256(str(full).encode("utf-8")).hexdigest()[:12]
        slug = "-".join(p for p in (_SLUG.sub("-", full.name).strip("-_")[:30], digest) if p)
    return f"lf-{slug}"


def qdrant_folder(settings: Settings) -> Path:
    """Where Qdrant's local mode keeps its files when QDRANT_URL is unset."""
    return settings.data_path / "qdrant"


def chroma_folder(settings: Settings) -> Path:
    """Where Chroma keeps its files."""
    return settings.data_path / "chroma"


def _lock_path(settings: Settings, name: str) -> Path:
    return settings.data_path / "locks" / f"{name}.lock"


def _qdrant_target(settings: Settings) -> dict:
    if settings.qdrant_url:
        key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        return {"url": settings.qdrant_url, "api_key": key}
    return {"path": qdrant_folder(settings)}


def _open_faiss(settings: Settings, path: Path, embedding_name: str, dim: int) -> VectorStore:
    return FaissStore.open(path, embedding_name, dim, settings.faiss_ann_threshold)


def _open_qdrant(settings: Settings, path: Path, embedding_name: str, dim: int) -> VectorStore:
    from loraflow.rag.qdrant_store import QdrantStore

    name = index_name(settings, path)
    return QdrantStore.open(
        name,
        embedding_name,
        dim,
        lock_path=_lock_path(settings, name),
        **_qdrant_target(settings),
    )


def _open_chroma(settings: Settings, path: Path, embedding_name: str, dim: int) -> VectorStore:
    from loraflow.rag.chroma_store import ChromaStore

    name = index_name(settings, path)
    return ChromaStore.open(
        chroma_folder(settings), name, embedding_name, dim, lock_path=_lock_path(settings, name)
    )


def _drop_faiss(settings: Settings, path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _drop_qdrant(settings: Settings, path: Path) -> None:
    from loraflow.rag.qdrant_store import drop_index

    drop_index(index_name(settings, path), **_qdrant_target(settings))


def _drop_chroma(settings: Settings, path: Path) -> None:
    from loraflow.rag.chroma_store import drop_index

    drop_index(chroma_folder(settings), index_name(settings, path))


Opener = Callable[[Settings, Path, str, int], VectorStore]
OPENERS: dict[str, Opener] = {"faiss": _open_faiss, "qdrant": _open_qdrant, "chroma": _open_chroma}
DROPPERS: dict[str, Callable[[Settings, Path], None]] = {
    "faiss": _drop_faiss,
    "qdrant": _drop_qdrant,
    "chroma": _drop_chroma,
}


def open_index(settings: Settings, path: Path, embedding_name: str, dim: int) -> VectorStore:
    """Open (or create) the index of `path` in the VECTOR_STORE backend."""
    return OPENERS[settings.vector_store](settings, Path(path), embedding_name, dim)


def write_lock_file(settings: Settings, path: Path) -> Path:
    """The file whose flock the writers of the index at `path` hold (see `write_lock`)."""
    if settings.vector_store == "faiss":
        return Path(path) / WRITE_LOCK_FILE
    return _lock_path(settings, index_name(settings, path))


def drop_index(settings: Settings, path: Path) -> None:
    """Delete the index of `path` (its folder, or its collections) in the VECTOR_STORE backend."""
    DROPPERS[settings.vector_store](settings, Path(path))


def close_clients() -> None:
    """Close the Qdrant and Chroma clients this process opened (e.g. before a restore)."""
    for module in ("loraflow.rag.qdrant_store", "loraflow.rag.chroma_store"):
        loaded = sys.modules.get(module)
        if loaded is not None:
            loaded.close_clients()

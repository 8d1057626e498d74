"""What of a data dir goes into a backup, and the locks that keep it still meanwhile.

Files that are being written are left out. loraflow writes them under names of their own
and publishes them with a rename, so those names are exactly what to skip:

- `.tmp-*` folders and files: a vector store version being saved, a backup or a restore;
- `.CURRENT-*`: a vector store's CURRENT pointer being replaced;
- `.NAME.tmp`: a job's JSON file (metrics, progress) being replaced;
- `.final/`: a finished training run's adapter being written before it moves into place;
- `.NAME.tmp-*/`: a bundled model being unpacked;
- `.NAME.export-*/` and `.NAME.merging-*/`: an adapter export or merge being written;
- `*.partial`: a GGUF conversion being written;
- `checkpoints/checkpoint-N/` without a readable `trainer_state.json` (written last);
- a knowledge base's `index-N/` that the dumped database does not name as its index: a
  re-embed building its new index (or one left by a crash, or a collection made after
  the dump).

Vector stores saved as `vN/` folders behind a `CURRENT` pointer contribute only the
version CURRENT names. Lock files, the live SQLite database (dumped instead), the model
cache and the backups folder are left out too.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from sqlalchemy import Engine, select

from loraflow import db
from loraflow.config import Settings
from loraflow.locks import file_lock
from loraflow.rag.backends import write_lock_file
from loraflow.training.trainer import CHECKPOINTS, is_complete_checkpoint

_SKIP_NAMES = {"loraflow.db", "loraflow.db-wal", "loraflow.db-shm", "loraflow.db-journal"}
_STAGING_DIR = re.compile(r"^(\.tmp|\.final$|\..+\.(tmp|export|merging)-)")
_STAGING_FILE = re.compile(r"^(\.tmp|\.CURRENT-)|(\.tmp|\.partial|\.lock)$")
_CHECKPOINT = re.compile(r"^checkpoint-\d+$")
COLLECTIONS = "collections"


def _index_path(settings: Settings, index_dir: str) -> Path:
    p = Path(index_dir).expanduser()
    return (p if p.is_absolute() else settings.data_path / p).resolve()


def _current_versions(root: Path) -> set[Path]:
    """For each versioned folder (has CURRENT), the version folder in use."""
    keep: set[Path] = set()
    for pointer in root.rglob("CURRENT"):
        try:
            name = pointer.read_text().strip()
        except (OSError, UnicodeDecodeError):
            # Replaced while we looked (the folder is read under its write lock), or
            # damaged: the store reports that itself; the backup carries on.
            continue
        if name and "/" not in name and name not in (".", ".."):
            keep.add(pointer.parent / name)
    return keep


def active_indexes(settings: Settings, collections_dump: bytes) -> set[Path]:
    """The index folders the dumped `kb_collections` rows name as in use."""
    rows = [json.loads(line) for line in collections_dump.splitlines() if line.strip()]
    return {_index_path(settings, r["index_dir"]) for r in rows if r.get("index_dir")}


def _skipped_dir(d: Path, name: str, active: set[Path], collections: Path) -> bool:
    if _STAGING_DIR.match(name):
        return True
    if d.name == CHECKPOINTS and _CHECKPOINT.match(name):
        return not is_complete_checkpoint(d / name)
    if d.parent.resolve() == collections:
        # collections/<id>/<index folder>: only the folder the database names.
        return (d / name).resolve() not in active
    return False


def data_files(settings: Settings, active: set[Path]) -> Iterator[Path]:
    """Files of the data dir that belong in a backup, in a stable order.

    `active` holds the knowledge-base index folders of the dumped database.
    """
    root = settings.data_path
    skip_dirs = {settings.cache_path.resolve(), (root / "backups").resolve()}
    collections = (root / COLLECTIONS).resolve()
    versioned = _current_versions(root)
    versioned_parents = {v.parent for v in versioned}
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        kept = []
        for name in sorted(dirnames):
            if (d / name).resolve() in skip_dirs or _skipped_dir(d, name, active, collections):
                continue
            # In a versioned folder only the current version is consistent.
            if d in versioned_parents and (d / name) not in versioned:
                continue
            kept.append(name)
        dirnames[:] = kept
        for name in sorted(filenames):
            p = d / name
            if d == root and name in _SKIP_NAMES:
                continue
            if _STAGING_FILE.search(name) or p.is_symlink() or not p.is_file():
                continue
            yield p


def _store_lock_files(settings: Settings, engine: Engine) -> list[Path]:
    """The write-lock files of the default store and of every knowledge base's index."""
    t = db.kb_collections
    with engine.connect() as conn:
        dirs = [r[0] for r in conn.execute(select(t.c.index_dir)).all()]
    paths = {settings.vector_store_dir.resolve(), *(_index_path(settings, d) for d in dirs)}
    if settings.vector_store == "faiss":
        # A FAISS index that has no folder yet has nothing to hold still.
        paths = {p for p in paths if p.is_dir()}
    return sorted({write_lock_file(settings, p) for p in paths})


@contextmanager
def hold_stores(
    settings: Settings, engine: Engine, on_wait: Callable[[], None] | None = None
) -> Iterator[None]:
    """Hold every vector store's write lock, the one ingest and delete take in any process.

    Taken in one order; every writer holds a single store's lock, so this cannot deadlock.
    """
    with ExitStack() as stack:
        for path in _store_lock_files(settings, engine):
            stack.enter_context(file_lock(path, on_wait))
        yield

"""What of a data dir goes into a backup, and how it is read so the archive is one moment.

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

The vector stores' write locks are held only while the snapshot is taken: the tables are
dumped, the files listed and every file of a store folder opened. A FAISS store publishes
a version by renames and never rewrites a file, so an open handle keeps reading the bytes
of that moment after the locks are released, whatever ingest or delete runs meanwhile.
Chroma and local Qdrant rewrite their files in place, so theirs are copied instead (into
memory, or an unnamed temporary file beside the archive). Training checkpoints, which a
running job deletes as it writes newer ones, are archived whole or not at all: every file
of one is opened before any is archived.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import Engine, select

from loraflow import db
from loraflow.config import Settings
from loraflow.locks import file_lock
from loraflow.rag.backends import chroma_folder, qdrant_folder, write_lock_file
from loraflow.rag.collections import index_folder
from loraflow.training.trainer import CHECKPOINTS, is_complete_checkpoint

_SKIP_NAMES = {"loraflow.db", "loraflow.db-wal", "loraflow.db-shm", "loraflow.db-journal"}
_STAGING_DIR = re.compile(r"^(\.tmp|\.final$|\..+\.(tmp|export|merging)-)")
_STAGING_FILE = re.compile(r"^(\.tmp|\.CURRENT-)|(\.tmp|\.partial|\.lock)$")
_CHECKPOINT = re.compile(r"^checkpoint-\d+$")
COLLECTIONS = "collections"
# Store files up to this size are read into memory under the locks, not held open.
_SMALL = 1024 * 1024
_COPY_BLOCK = 1024 * 1024


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
    return {index_folder(settings, r["index_dir"]).resolve() for r in rows if r.get("index_dir")}


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


def _store_indexes(settings: Settings, engine: Engine) -> set[Path]:
    """The default store's folder and every knowledge base's index folder."""
    t = db.kb_collections
    with engine.connect() as conn:
        dirs = [r[0] for r in conn.execute(select(t.c.index_dir)).all()]
    paths = {
        settings.vector_store_dir.resolve(),
        *(index_folder(settings, d).resolve() for d in dirs),
    }
    if settings.vector_store == "faiss":
        # A FAISS index that has no folder yet has nothing to hold still.
        paths = {p for p in paths if p.is_dir()}
    return paths


def _store_folders(settings: Settings, indexes: set[Path]) -> list[Path]:
    """The data-dir folders whose files those locks keep still."""
    if settings.vector_store == "faiss":
        return sorted(indexes)
    if settings.vector_store == "chroma":
        return [chroma_folder(settings).resolve()]
    return [] if settings.qdrant_url else [qdrant_folder(settings).resolve()]


@contextmanager
def hold_stores(
    settings: Settings, engine: Engine, on_wait: Callable[[], None] | None = None
) -> Iterator[list[Path]]:
    """Hold every vector store's write lock, the one ingest and delete take in any process.

    Yields the data-dir folders the locks keep still. Taken in one order; every writer
    holds a single store's lock, so this cannot deadlock.
    """
    indexes = _store_indexes(settings, engine)
    with ExitStack() as stack:
        for path in sorted({write_lock_file(settings, p) for p in indexes}):
            stack.enter_context(file_lock(path, on_wait))
        yield _store_folders(settings, indexes)


@dataclass
class HeldFile:
    """A file's bytes as they were when it was opened, readable once from `stream`."""

    stream: BinaryIO
    size: int
    mode: int
    mtime: float

    def close(self) -> None:
        self.stream.close()


def hold_file(
    path: Path, *, load_small: bool = False, copy_into: Path | None = None
) -> HeldFile | None:
    """Open `path` for archiving; None when it is gone.

    `load_small` reads a small file into memory now, so it holds no handle. `copy_into`
    copies the bytes now, a large file into an unnamed temporary file in that folder, for
    a file that is rewritten in place.
    """
    try:
        f = open(path, "rb")  # noqa: SIM115 - returned open, or closed below
    except FileNotFoundError:
        return None
    copy: BinaryIO | None = None
    try:
        st = os.fstat(f.fileno())
        held = HeldFile(f, st.st_size, stat.S_IMODE(st.st_mode), st.st_mtime)
        if (load_small or copy_into is not None) and st.st_size <= _SMALL:
            data = f.read()
            held.stream, held.size = io.BytesIO(data), len(data)
        elif copy_into is not None:
            copy = tempfile.TemporaryFile(dir=copy_into)  # noqa: SIM115 - held
            shutil.copyfileobj(f, copy, _COPY_BLOCK)
            held.stream, held.size = copy, copy.tell()
            copy.seek(0)
        else:
            return held
    except BaseException:
        if copy is not None:
            copy.close()
        f.close()
        raise
    f.close()
    return held


def hold_store_files(
    stack: ExitStack,
    settings: Settings,
    files: list[Path],
    folders: list[Path],
    spool: Path,
) -> dict[Path, HeldFile | None]:
    """Open (or copy) every file of `files` that lies in `folders`; `stack` closes them.

    Called under the store locks. Small files are read into memory, so only large ones
    keep a handle; Chroma and local Qdrant files are copied (large ones into `spool`)
    because those stores rewrite them in place.
    """
    spool_into = spool if settings.vector_store != "faiss" else None
    held: dict[Path, HeldFile | None] = {}
    for path in files:
        if any(path.is_relative_to(folder) for folder in folders):
            f = hold_file(path, load_small=True, copy_into=spool_into)
            if f is not None:
                stack.callback(f.close)
            held[path] = f
    return held


def checkpoint_of(root: Path, path: Path) -> Path | None:
    """The `checkpoints/checkpoint-N/` folder that `path` lies in, if any."""
    for parent in path.relative_to(root).parents:
        if _CHECKPOINT.match(parent.name) and parent.parent.name == CHECKPOINTS:
            return root / parent
    return None


def archive_units(root: Path, files: list[Path]) -> list[tuple[list[Path], bool]]:
    """`files` in order, one unit each but one for all files of a checkpoint (then True)."""
    units: dict[Path, tuple[list[Path], bool]] = {}
    for path in files:
        checkpoint = checkpoint_of(root, path)
        units.setdefault(checkpoint or path, ([], checkpoint is not None))[0].append(path)
    return list(units.values())


def open_unit(
    stack: ExitStack, unit: list[Path], held: dict[Path, HeldFile | None], *, whole: bool
) -> list[HeldFile | None]:
    """Open every file of `unit` before any is archived; `stack` closes them.

    Files opened under the store locks come from `held`. With `whole` (a checkpoint) one
    file gone means the unit is being deleted: all of it is left out (all None).
    """
    opened: list[HeldFile | None] = []
    for path in unit:
        f = held.pop(path) if path in held else hold_file(path)
        if f is not None:
            stack.callback(f.close)
        opened.append(f)
    if whole and None in opened:
        return [None] * len(opened)
    return opened

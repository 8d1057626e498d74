"""Backup and restore of one instance's data dir as a single verified archive.

The archive is a gzipped tar holding `manifest.json` (format, version, sha256 and size of
every member) and the data files. The database goes in as one JSON-lines file per table,
so an archive made on SQLite restores into PostgreSQL and back. Which files go in, and
how they are read so the archive is one moment, is decided in `backup_files`: the store
locks are held only while the tables are dumped and the store files opened, not while the
archive is written. Each file is read once and the bytes archived are the bytes hashed;
the finished archive is verified before it is renamed into place.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from sqlalchemy import DateTime, Engine, delete, func, select

from loraflow import __version__, db
from loraflow.config import Settings
from loraflow.errors import (
    ConfigError,
    DiskFull,
    InvalidInput,
    LoraflowError,
    StoreError,
    is_disk_full,
)
from loraflow.locks import data_dir_unused
from loraflow.services.ops.backup_files import (
    HeldFile,
    active_indexes,
    archive_units,
    data_files,
    hold_store_files,
    hold_stores,
    open_unit,
)

FORMAT = "loraflow-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DB_PREFIX = "database/"
FILES_PREFIX = "files/"
_BLOCK = 1024 * 1024
# Files up to this size are read into memory once; larger ones are hashed as tar copies them.
_IN_MEMORY = 64 * 1024 * 1024

Progress = Callable[[str, int, int], None]


@dataclass
class BackupReport:
    """What went into an archive."""

    path: Path
    files: int
    tables: dict[str, int]
    bytes: int
    seconds: float


@dataclass
class RestoreReport:
    """What came out of an archive."""

    data_dir: Path
    files: int
    tables: dict[str, int]
    created_at: str
    source_version: str
    warnings: list[str] = field(default_factory=list)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        raise TypeError("binary columns are not supported in backups")
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _dump_tables(engine: Engine) -> dict[str, bytes]:
    """Every known table as JSON lines, read in one transaction for a consistent view."""
    out: dict[str, bytes] = {}
    with engine.connect() as conn, conn.begin():
        for table in db.metadata.sorted_tables:
            lines = [
                json.dumps(dict(row._mapping), default=_json_default, ensure_ascii=False)
                for row in conn.execute(select(table))
            ]
            out[table.name] = ("\n".join(lines) + ("\n" if lines else "")).encode()
    return out


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


class _HashingReader:
    """A file read once: the bytes tar copies into the archive are the bytes hashed."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.sha256 = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        block = self._f.read(size)
        self.sha256.update(block)
        return block


def _add_held(tar: tarfile.TarFile, f: HeldFile, member: str, path: Path) -> dict[str, Any]:
    """Archive one opened file read once, hashing those very bytes.

    A file that grows meanwhile (a running job's log) is archived as it was when opened.
    """
    info = tarfile.TarInfo(member)
    info.size, info.mode, info.mtime = f.size, f.mode, int(f.mtime)
    if f.size <= _IN_MEMORY:
        data = f.stream.read(f.size)
        info.size = len(data)  # shorter if it shrank since
        tar.addfile(info, io.BytesIO(data))
        return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    reader = _HashingReader(f.stream)
    try:
        tar.addfile(info, reader)
    except OSError as exc:
        if exc.errno is not None:
            raise
        raise StoreError(
            f"{path} shrank while it was archived; no partial archive was left",
            hint="run the backup again",
        ) from exc
    return {"sha256": reader.sha256.hexdigest(), "size": info.size}


def _write_archive(
    tmp: Path,
    root: Path,
    tables: dict[str, bytes],
    files: list[Path],
    held: dict[Path, HeldFile | None],
    progress: Progress | None,
) -> dict[str, Any]:
    """Write the archive; `held` are the store files opened under the locks.

    Other files are opened as they are reached, a checkpoint's all at once (see open_unit).
    """
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "loraflow_version": __version__,
        "created_at": datetime.now(UTC).isoformat(),
        "members": {},
    }
    with tarfile.open(tmp, "w:gz") as tar:
        for name, data in tables.items():
            member = f"{DB_PREFIX}{name}.jsonl"
            _add_bytes(tar, member, data)
            manifest["members"][member] = {
                "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data),
            }
        done = 0
        for unit, whole in archive_units(root, files):
            with ExitStack() as stack:
                for path, f in zip(unit, open_unit(stack, unit, held, whole=whole), strict=True):
                    done += 1
                    rel = path.relative_to(root).as_posix()
                    if f is not None:  # None: removed since it was listed
                        member = f"{FILES_PREFIX}{rel}"
                        manifest["members"][member] = _add_held(tar, f, member, path)
                        f.close()
                    if progress:
                        progress(rel, done, len(files))
        _add_bytes(tar, MANIFEST, json.dumps(manifest, indent=1).encode())
    with open(tmp, "rb") as written:
        os.fsync(written.fileno())
    return manifest


def create_backup(
    settings: Settings,
    engine: Engine,
    target: Path | None = None,
    *,
    progress: Progress | None = None,
    on_wait: Callable[[], None] | None = None,
) -> BackupReport:
    """Write one verified archive of everything that matters; a failure leaves no file.

    Every vector store's write lock is held while the tables are dumped, the files listed
    and the store files opened, so no ingest or delete, in this process or another, comes
    between them; the archive is then written from those handles with the locks released.
    `on_wait` is called when a running writer makes the backup wait.
    """
    started = time.perf_counter()
    root = settings.data_path
    if not root.is_dir():
        raise ConfigError(f"data dir {root} does not exist; nothing to back up")
    if target is None:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        target = root / "backups" / f"loraflow-{stamp}.tar.gz"
    target = target.expanduser().resolve()
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".tmp-backup-", dir=target.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        with ExitStack() as handles:  # every file held open is closed on every path
            with hold_stores(settings, engine, on_wait) as folders:
                tables = _dump_tables(engine)
                active = active_indexes(settings, tables.get(db.kb_collections.name, b""))
                files = list(data_files(settings, active))
                held = hold_store_files(handles, settings, files, folders, target.parent)
            manifest = _write_archive(tmp, root, tables, files, held, progress)
        try:
            verify_backup(tmp)
        except InvalidInput as exc:
            raise StoreError(
                f"the archive written to {target} did not verify ({exc.message}); "
                "no partial archive was left",
                hint="check the disk, then run the backup again",
            ) from exc
        os.replace(tmp, target)
    except OSError as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise (DiskFull if is_disk_full(exc) else StoreError)(
            f"backup to {target} failed: {exc.strerror or exc}; no partial archive was left",
            hint="free disk space, or write the archive elsewhere (loraflow backup --to)",
        ) from exc
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise
    return BackupReport(
        path=target,
        files=len([m for m in manifest["members"] if m.startswith(FILES_PREFIX)]),
        tables={k: v.count(b"\n") for k, v in tables.items()},
        bytes=target.stat().st_size,
        seconds=round(time.perf_counter() - started, 3),
    )


def _safe_member_path(name: str) -> PurePosixPath:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise InvalidInput(f"archive member {name!r} has an unsafe path; refusing the archive")
    return p


def read_manifest(archive: Path) -> dict[str, Any]:
    """Open an archive and return its manifest, refusing foreign or damaged files."""
    if not archive.is_file():
        raise InvalidInput(f"backup archive {archive} does not exist")
    try:
        with tarfile.open(archive, "r:gz") as tar:
            member = tar.getmember(MANIFEST)
            f = tar.extractfile(member)
            manifest = json.loads(f.read()) if f else None
    except KeyError as exc:
        raise InvalidInput(f"{archive} is not a loraflow backup (no {MANIFEST})") from exc
    except (tarfile.TarError, EOFError, OSError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"{archive} is damaged or not a loraflow backup: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InvalidInput(f"{archive} is not a loraflow backup (format is not {FORMAT!r})")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise InvalidInput(
            f"{archive} has backup format {manifest.get('format_version')}; "
            f"this loraflow reads up to {FORMAT_VERSION}: upgrade loraflow"
        )
    return manifest


def verify_backup(archive: Path) -> dict[str, Any]:
    """Check every member against the manifest; raise InvalidInput naming the first bad one."""
    manifest = read_manifest(archive)
    expected: dict[str, dict[str, Any]] = manifest["members"]
    seen: set[str] = set()
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if member.name == MANIFEST:
                    continue
                _safe_member_path(member.name)
                if not member.isfile():
                    raise InvalidInput(f"archive member {member.name!r} is not a regular file")
                meta = expected.get(member.name)
                if meta is None:
                    raise InvalidInput(f"archive member {member.name!r} is not in the manifest")
                f = tar.extractfile(member)
                h = hashlib.sha256()
                while f is not None and (block := f.read(_BLOCK)):
                    h.update(block)
                if h.hexdigest() != meta["sha256"]:
                    raise InvalidInput(f"checksum mismatch for {member.name!r}: archive tampered")
                seen.add(member.name)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InvalidInput(f"{archive} is damaged (truncated or corrupt): {exc}") from exc
    missing = sorted(set(expected) - seen)
    if missing:
        raise InvalidInput(
            f"{archive} is incomplete: {len(missing)} members missing, e.g. {missing[0]}"
        )
    return manifest


def _is_empty_dir(path: Path) -> bool:
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


def _coerce_row(table: Any, row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for col in table.columns:
        if col.name not in row:
            continue
        value = row[col.name]
        if isinstance(col.type, DateTime) and isinstance(value, str):
            value = datetime.fromisoformat(value)
        out[col.name] = value
    return out


def restore_backup(
    archive: Path,
    settings: Settings,
    *,
    force: bool = False,
    make_engine: Callable[[str], Engine] = db.make_engine,
) -> RestoreReport:
    """Restore an archive into an empty or missing data dir (or a non-empty one with force).

    A data dir that a running service uses is refused (Conflict); an existing one, empty
    or not, is held against a service starting while the restore runs.
    """
    manifest = verify_backup(archive)
    root = settings.data_path
    if not _is_empty_dir(root) and not force:
        raise InvalidInput(
            f"data dir {root} is not empty; restore into an empty folder "
            "(set LORAFLOW_DATA_DIR or --data-dir) or pass --force to replace its contents"
        )
    # The lock puts a lock file into an empty folder; the folder is still ours to replace.
    replace_dir = force or root.is_dir()
    with data_dir_unused(root) if root.is_dir() else nullcontext():
        return _restore(
            archive, settings, manifest, force=force, replace_dir=replace_dir,
            make_engine=make_engine,
        )  # fmt: skip


def _restore(
    archive: Path,
    settings: Settings,
    manifest: dict[str, Any],
    *,
    force: bool,
    replace_dir: bool,
    make_engine: Callable[[str], Engine],
) -> RestoreReport:
    root = settings.data_path
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-restore-", dir=root.parent))
    tables: dict[str, list[dict[str, Any]]] = {}
    files = 0
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if member.name == MANIFEST:
                    continue
                rel = _safe_member_path(member.name)
                f = tar.extractfile(member)
                if f is None:
                    continue
                if member.name.startswith(DB_PREFIX):
                    name = rel.name.removesuffix(".jsonl")
                    tables[name] = [json.loads(line) for line in f.read().splitlines() if line]
                elif member.name.startswith(FILES_PREFIX):
                    dest = staging.joinpath(*rel.parts[1:])
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with open(dest, "wb") as out:
                        shutil.copyfileobj(f, out, _BLOCK)
                    files += 1
        # A SQLite file inside the data dir is filled in the staging folder, so the swap
        # below brings files and tables together or not at all.
        url = settings.db_url
        inside = f"sqlite:///{root}/"
        staged_url = (
            url.replace(inside, f"sqlite:///{staging}/", 1) if url.startswith(inside) else url
        )
        engine = make_engine(staged_url)
        try:
            counts = _restore_tables(engine, tables, force=force)
        finally:
            engine.dispose()
        if root.exists():
            if not replace_dir:
                raise InvalidInput(f"data dir {root} appeared while restoring; nothing changed")
            old = root.with_name(f".tmp-replaced-{root.name}-{int(time.time())}")
            os.replace(root, old)
            os.replace(staging, root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return RestoreReport(
        data_dir=root,
        files=files,
        tables=counts,
        created_at=manifest.get("created_at", ""),
        source_version=manifest.get("loraflow_version", ""),
        warnings=[
            f"table {t!r} is unknown to this loraflow; skipped"
            for t in tables
            if t not in db.metadata.tables
        ],
    )


def _restore_tables(
    engine: Engine, tables: dict[str, list[dict[str, Any]]], *, force: bool
) -> dict[str, int]:
    counts: dict[str, int] = {}
    try:
        with engine.begin() as conn:
            for table in db.metadata.sorted_tables:
                rows = tables.get(table.name)
                if rows is None:
                    continue
                existing = conn.execute(select(func.count()).select_from(table)).scalar_one()
                if existing and table.name != "schema_info" and not force:
                    raise InvalidInput(
                        f"database table {table.name!r} already has {existing} rows; "
                        "restore into an empty database or pass --force"
                    )
                conn.execute(delete(table))
                if rows:
                    conn.execute(table.insert(), [_coerce_row(table, r) for r in rows])
                counts[table.name] = len(rows)
    except LoraflowError:
        raise
    except Exception as exc:
        raise StoreError(f"restoring the database failed, nothing was written: {exc}") from exc
    return counts

"""Crash-safe saving of a set of files: versioned sub-folders plus an atomic CURRENT pointer."""

# Layout: `root/v<N>/<files>` and `root/CURRENT` holding "v<N>". A save writes a hidden
# temp folder, fsyncs it, renames it to the next `v<N>`, then atomically replaces CURRENT.
# Readers follow CURRENT, so a crash at any step yields the old or the new set, never a mix.

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from loraflow.errors import StoreError

CURRENT = "CURRENT"
_VERSION_RE = re.compile(r"^v(\d+)$")
_TEMP_PREFIXES = (".tmp-", ".CURRENT-")


def current_version(root: Path) -> Path | None:
    """The folder CURRENT points at, or None when `root` holds no saved version."""
    pointer = root / CURRENT
    if not pointer.exists():
        return None
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreError(f"Vector store file {str(pointer)!r} is unreadable: {exc}") from exc
    if not _VERSION_RE.match(name):
        raise StoreError(
            f"Vector store file {str(pointer)!r} is damaged: it holds {name[:40]!r}, "
            "expected a version name like 'v3'"
        )
    folder = root / name
    if not folder.is_dir():
        raise StoreError(
            f"Vector store file {str(pointer)!r} points at {name!r}, which is missing from {root}"
        )
    return folder


def write_version(
    root: Path, files: dict[str, bytes], extra: Callable[[Path], object] | None = None
) -> Path:
    """Write `files` as the next version of `root` and make it current; returns its folder.

    `extra`, when given, writes further files into the (not yet visible) version folder.
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"v{_next_number(root)}"
    tmp = root / f".tmp-{uuid.uuid4().hex}"
    pointer_tmp = root / f".CURRENT-{uuid.uuid4().hex}"
    switched = False
    try:
        tmp.mkdir()
        for name, data in files.items():
            _write_synced(tmp / name, data)
        if extra is not None:
            extra(tmp)
            for p in tmp.iterdir():
                if p.name not in files:
                    _fsync_file(p)
        _fsync_dir(tmp)
        os.replace(tmp, final)
        _fsync_dir(root)
        _write_synced(pointer_tmp, f"{final.name}\n".encode())
        os.replace(pointer_tmp, root / CURRENT)
        switched = True
        _fsync_dir(root)
    finally:
        if not switched:
            # CURRENT still names the old version, so the new pieces are garbage.
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(final, ignore_errors=True)
            pointer_tmp.unlink(missing_ok=True)
    _remove_stale(root, keep=final.name)
    return final


def _next_number(root: Path) -> int:
    # Numbers only grow, so a folder left by a crashed save is never written into again.
    numbers = [int(m.group(1)) for p in root.iterdir() if (m := _VERSION_RE.match(p.name))]
    return max(numbers, default=0) + 1


def _remove_stale(root: Path, keep: str) -> None:
    for p in root.iterdir():
        stale_version = _VERSION_RE.match(p.name) and p.name != keep
        if stale_version or p.name.startswith(_TEMP_PREFIXES):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    # Makes renames durable on POSIX; Windows cannot open folders, and does not need it.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

"""sha256 digests of adapter files, each file read once per process while it is unchanged.

Digests are cached by each hashed file's (path, size, mtime_ns, ctime_ns, inode): any write,
replacement or `touch` changes the key, so the file is hashed again (ctime cannot be set
back, even where mtime is). Files changed in the last 2 s are not cached, since two writes
in one timestamp tick look alike. The residual risk is a same-size rewrite that keeps the
ctime, which needs raw block-device access or setting the system clock back;
`fresh=True` (`loraflow adapters show --verify`) always reads every byte.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from loraflow.models.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS

# Digests of files already read by this process; bounded so a long-lived server stays small.
_HASH_CACHE_SIZE = 4096
_hash_cache: OrderedDict[tuple[Any, ...], str] = OrderedDict()
_hash_lock = threading.Lock()
# File timestamps tick coarsely (jiffies; whole seconds on some filesystems): files changed
# within this window of a hash are hashed again next time, as git does for "racy" entries.
_RACY_NS = 2_000_000_000


def _signature(files: Sequence[Path]) -> tuple[Any, ...]:
    """What changes whenever a file's content can have changed (raises OSError if missing)."""
    out: list[Any] = []
    for f in files:
        st = os.stat(f)
        out.append((str(Path(f).resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
    return tuple(out)


def _cached_digest(
    kind: str, files: Sequence[Path], compute: Callable[[], str], fresh: bool
) -> str:
    """The digest `compute` gives for `files`, from the cache while they are unchanged."""
    key = (kind, _signature(files))
    if not fresh:
        with _hash_lock:
            hit = _hash_cache.get(key)
            if hit is not None:
                _hash_cache.move_to_end(key)
                return hit
    started = time.time_ns()
    digest = compute()
    # Not kept: a file written while it was read (a digest of neither version), or written
    # so recently that a second write could land in the same timestamp tick unseen.
    recent = any(max(sig[2], sig[3]) >= started - _RACY_NS for sig in key[1])
    if not recent and _signature(files) == key[1]:
        with _hash_lock:
            _hash_cache[key] = digest
            _hash_cache.move_to_end(key)
            while len(_hash_cache) > _HASH_CACHE_SIZE:
                _hash_cache.popitem(last=False)
    return digest


def checksum(path: Path, *, fresh: bool = False) -> str:
    """sha256 over the adapter's config and weights (what serving it depends on).

    Cached while the files are unchanged (see the module docstring); `fresh` re-reads them.
    """
    files = [Path(path) / ADAPTER_CONFIG, Path(path) / ADAPTER_WEIGHTS]

    def compute() -> str:
        digest = hashlib.sha256()
        for f in files:
            digest.update(f.name.encode())
            _feed(digest, f)
        return digest.hexdigest()

    return _cached_digest("adapter", files, compute, fresh)


def _feed(digest: Any, path: Path) -> None:
    """Add a file's bytes to `digest`, 1 MiB at a time."""
    with Path(path).open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)


def sha256_file(path: Path, *, fresh: bool = False) -> str:
    """Hex sha256 of one file, read in 1 MiB pieces; cached while the file is unchanged."""

    def compute() -> str:
        digest = hashlib.sha256()
        _feed(digest, Path(path))
        return digest.hexdigest()

    return _cached_digest("file", [Path(path)], compute, fresh)

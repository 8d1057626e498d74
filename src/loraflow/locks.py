"""Locks on files, held across threads' open handles and across processes.

`file_lock` is the exclusive lock writers take. `service_lock` is the shared lock every
server process holds on its data dir for as long as it runs, and `data_dir_unused` the
exclusive one a restore takes to prove that no server uses the folder it replaces. Both
are flocks: the kernel drops them when a process ends, even when it crashes, so a lock file
left behind never counts as a running service.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from loraflow.errors import ConfigError, Conflict

SERVICE_LOCK = ".service.lock"


@contextmanager
def file_lock(path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if missing) for the block.

    `on_wait` is called once when another process holds the lock, before blocking on it,
    so a caller can say why it waits.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@contextmanager
def service_lock(data_dir: Path) -> Iterator[bool]:
    """Mark `data_dir` as used by a running server for the block (shared by its workers).

    Yields whether this process is the first server on the folder: no other server process
    held it when this one started (a fresh start, not a worker restarted beside others).
    """
    path = data_dir / SERVICE_LOCK
    with path.open("a") as handle:
        first = _try_flock(handle.fileno(), fcntl.LOCK_EX)
        # Workers starting together may each find the folder held only for this instant by
        # another one's exclusive test; a restore holds it for its whole run.
        deadline = time.monotonic() + 3.0
        while not _try_flock(handle.fileno(), fcntl.LOCK_SH):
            if time.monotonic() > deadline:
                raise ConfigError(
                    f"data dir {data_dir} is being restored from a backup",
                    hint="start the service once `loraflow restore` has finished",
                )
            time.sleep(0.05)
        try:
            yield first
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _try_flock(fd: int, kind: int) -> bool:
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextmanager
def data_dir_unused(data_dir: Path) -> Iterator[None]:
    """Hold `data_dir` against servers for the block; Conflict while one uses it."""
    path = data_dir / SERVICE_LOCK
    with path.open("a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Conflict(
                f"data dir {data_dir} is in use by a running loraflow service; "
                "restoring over it would pull its files away while it serves",
                hint="stop the service (loraflow serve / uvicorn) first, or restore into "
                "another folder and point LORAFLOW_DATA_DIR at it",
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

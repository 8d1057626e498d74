"""Which process owns a persisted run, and whether that process still runs."""

from __future__ import annotations

import os
import socket


def owner() -> str:
    """This process as `host:pid:start`; the start time tells a reused pid from its first use."""
    return f"{socket.gethostname()}:{os.getpid()}:{_started(os.getpid()):.2f}"


def _started(pid: int) -> float:
    """When process `pid` started (seconds since the epoch); raises if it does not run."""
    import psutil

    return float(psutil.Process(pid).create_time())


def owner_alive(owner_id: str | None) -> bool:
    """Whether the process that owns a workflow still runs (unknown hosts count as alive).

    Owners are `host:pid:start`; rows written before the start time was recorded hold
    `host:pid` and are judged by the pid alone.
    """
    if not owner_id or ":" not in owner_id:
        return False
    parts = owner_id.rsplit(":", 2)
    start: float | None = None
    if len(parts) == 3 and _is_number(parts[2]) and parts[1].isdigit():
        host, pid, start = parts[0], parts[1], float(parts[2])
    else:
        host, _, pid = owner_id.rpartition(":")
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    if start is None:
        return True
    import psutil

    try:
        # In a restarted container the same pid can belong to a new process; its start time
        # differs (recorded to 1/100 s, psutil's clock-tick resolution).
        return abs(_started(int(pid)) - start) < 0.5
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True  # cannot tell: never interrupt a run that may be alive


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True

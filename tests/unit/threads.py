"""The process's OS threads, counted: whether a thread gave back its OpenMP workers."""

from __future__ import annotations

import os
import time
from pathlib import Path

HAS_PROC = Path("/proc/self/task").is_dir()


def os_threads() -> int:
    """How many OS threads this process has now (Linux /proc)."""
    return len(os.listdir("/proc/self/task"))


def settled(expected: int, timeout: float = 5.0) -> int:
    """The thread count once it is `expected`, or whatever it is at the timeout (worker
    threads told to exit take a moment to go)."""
    deadline = time.monotonic() + timeout
    while os_threads() != expected and time.monotonic() < deadline:
        time.sleep(0.02)
    return os_threads()

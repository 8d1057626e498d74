"""The process's OS threads, counted: whether a thread gave back its OpenMP workers."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to `n` inside, restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def on_new_thread(work: Callable[[], None], torch_threads_inside: int = 2) -> None:
    """Run `work` on a thread of its own with that many intra-op threads, so a parallel op
    there makes that thread a worker team."""
    with torch_threads(torch_threads_inside):
        thread = threading.Thread(target=work)
        thread.start()
        thread.join()

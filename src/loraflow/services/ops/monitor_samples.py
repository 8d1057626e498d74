"""Live numbers every server worker writes to the database, and the windows alerts read.

A worker's counters in memory (`Runtime.traffic`) only see its own requests; alerts must see
all workers of `serve --workers N`, so each worker buffers its finished requests and writes
them in one batch a second, and samples its own CPU, memory and GPU use.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import psutil
from sqlalchemy import Engine, delete, select

from loraflow import db

log = logging.getLogger("loraflow.alerts")
# Buffered requests beyond this are dropped (and counted) rather than growing without end
# while the database is unreachable.
MAX_BUFFER = 50_000


def worker_id() -> str:
    return f"{socket.gethostname()[:40]}:{os.getpid()}"


@dataclass(frozen=True)
class Sample:
    target: str
    variant: str
    ok: bool
    seconds: float
    at: float


class RequestBuffer:
    """Finished requests of this worker, waiting for the next batch write."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: list[dict[str, Any]] = []
        self.dropped = 0

    def add(self, target: str, variant: str, ok: bool, seconds: float) -> None:
        row = {"target": target, "variant": variant, "ok": ok, "seconds": float(seconds)}
        row["at"] = time.time()
        with self._lock:
            if len(self._rows) >= MAX_BUFFER:
                self.dropped += 1
                return
            self._rows.append(row)

    def flush(self, engine: Engine, worker: str) -> int:
        with self._lock:
            rows, self._rows = self._rows, []
        if not rows:
            return 0
        try:
            with engine.begin() as conn:
                conn.execute(db.monitor_requests.insert(), [{**r, "worker": worker} for r in rows])
        except Exception:
            with self._lock:  # keep them for the next try, within the bound
                self._rows = (rows + self._rows)[:MAX_BUFFER]
            raise
        return len(rows)


def requests_since(engine: Engine, since: float) -> list[Sample]:
    t = db.monitor_requests
    q = select(t.c.target, t.c.variant, t.c.ok, t.c.seconds, t.c.at).where(t.c.at >= since)
    with engine.connect() as conn:
        return [Sample(r[0], r[1], bool(r[2]), float(r[3]), float(r[4])) for r in conn.execute(q)]


# --- resources -------------------------------------------------------------------------------
class ResourceSampler:
    """CPU and resident memory of this process (psutil); GPU memory and use when CUDA runs."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.proc.cpu_percent(None)  # the first call only starts the measurement
        self.cores = psutil.cpu_count() or 1

    def sample(self) -> dict[str, Any]:
        rss = float(self.proc.memory_info().rss)
        row: dict[str, Any] = {
            "cpu_percent": self.proc.cpu_percent(None) / self.cores,
            "memory_percent": 100.0 * rss / psutil.virtual_memory().total,
            "rss_bytes": rss,
            "at": time.time(),
        }
        row.update(gpu_use())
        return row


def gpu_use() -> dict[str, float | None]:
    """GPU memory in use and utilisation, in percent; None without CUDA.

    torch is only asked when something already imported it: a server without a local model
    must not load torch just to learn that there is no GPU.
    """
    out: dict[str, float | None] = {"gpu_memory_percent": None, "gpu_util_percent": None}
    torch = sys.modules.get("torch")
    if torch is None:
        return out
    try:
        if not torch.cuda.is_available():
            return out
        free, total = torch.cuda.mem_get_info()
        out["gpu_memory_percent"] = 100.0 * (total - free) / total if total else None
        # Utilisation needs NVML (pynvml); memory alone still counts without it.
        with contextlib.suppress(Exception):
            out["gpu_util_percent"] = float(torch.cuda.utilization())
    except Exception as exc:
        log.debug("GPU use not readable: %s", exc)
    return out


def write_resources(engine: Engine, worker: str, row: dict[str, Any]) -> None:
    with engine.begin() as conn:
        conn.execute(db.monitor_resources.insert().values(worker=worker, **row))


def resources_since(engine: Engine, since: float) -> list[dict[str, Any]]:
    t = db.monitor_resources
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(t).where(t.c.at >= since))]


def prune(engine: Engine, before: float) -> None:
    """Forget samples older than every window can look at."""
    with engine.begin() as conn:
        conn.execute(delete(db.monitor_requests).where(db.monitor_requests.c.at < before))
        conn.execute(delete(db.monitor_resources).where(db.monitor_resources.c.at < before))

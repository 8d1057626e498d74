"""Samples a server's resident memory (its process and children) during a bench run."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import numpy as np
import psutil


def second_half_slope(samples: list[list[float]]) -> float | None:
    """MB per minute over the second half of [seconds, MB] samples (None when too few).

    Warm-up (batch buffers, allocator arenas) lands early in a run; a leak keeps climbing
    after it, which this slope shows where a first-vs-last comparison mixes the two.
    """
    if not samples:
        return None
    half = samples[-1][0] / 2
    late = [(t, mb) for t, mb in samples if t >= half]
    if len(late) < 3:
        return None
    slope = np.polyfit([t for t, _ in late], [mb for _, mb in late], 1)[0]
    return round(float(slope) * 60, 2)


class RssSampler(threading.Thread):
    """Samples the server's RSS (its process and children) every `every` seconds."""

    def __init__(self, pid: int | None, every: float, t0: float) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid) if pid else None
        self.every, self.t0 = every, t0
        self.samples: list[tuple[float, int]] = []
        self.stopped = threading.Event()

    def rss(self) -> int:
        assert self.proc is not None
        procs = [self.proc, *self.proc.children(recursive=True)]
        total = 0
        for p in procs:
            # A child may exit between listing and reading.
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    def run(self) -> None:
        while self.proc is not None and not self.stopped.is_set():
            try:
                self.samples.append((time.perf_counter() - self.t0, self.rss()))
            except psutil.Error:  # the server is gone: its errors show in the requests
                return
            self.stopped.wait(self.every)

    def summary(self, duration: float) -> dict[str, Any]:
        if not self.samples:
            return {"samples": [], "growth_mb": None, "growth_ratio": None}
        q = duration / 4
        first = [r for t, r in self.samples if t <= q]
        last = [r for t, r in self.samples if t >= duration - q]
        mb = 2**20
        out: dict[str, Any] = {
            "samples": [[round(t, 1), round(r / mb, 1)] for t, r in self.samples],
            "first_quarter_mb": None,
            "last_quarter_mb": None,
            "growth_mb": None,
            "growth_ratio": None,
            "max_mb": round(max(r for _, r in self.samples) / mb, 1),
            "second_half_mb_per_min": None,
        }
        out["second_half_mb_per_min"] = second_half_slope(out["samples"])
        if first and last:
            a, b = float(np.mean(first)), float(np.mean(last))
            out.update(
                first_quarter_mb=round(a / mb, 1),
                last_quarter_mb=round(b / mb, 1),
                growth_mb=round((b - a) / mb, 1),
                growth_ratio=round((b - a) / a, 4),
            )
        return out

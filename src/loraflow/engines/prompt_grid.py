"""Fixed chunk boundaries for prompt evaluation, so a cached prefix is reused bit-exactly.

A prefix evaluated inside a longer chunk is not bit-identical to one evaluated alone, so
reusing a cache at an arbitrary position can change greedy answers. When every prompt is cut
at the same positions, each position is always computed in the same chunk: reusing the cache
up to a shared boundary gives exactly the numbers a fresh evaluation would.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

# Prompt chunk boundaries: fine at the start, where prompts share a system prompt, then
# coarser so long prompts are still evaluated in large (fast) chunks.
_FINE_GRID = (16, 32, 48, 64, 128, 256, 512)
_COARSE_STEP = 512  # the last boundary of every fine grid


# The lean decoder's grid: 64, 512, then every 512. Its prompt chunks are GEMMs, which small
# chunks make slow (a 40-token prompt cut at 16 and 32 took visibly longer), so a prompt under
# 64 tokens is one chunk and only a shared prefix of 64 tokens or more is reused.
LEAN_GRID = (64, 512)


def grid_floor(n: int, fine: tuple[int, ...] = _FINE_GRID) -> int:
    """The largest chunk boundary <= n (0 when none)."""
    if n >= fine[-1]:
        return n // _COARSE_STEP * _COARSE_STEP
    return max((b for b in fine if b <= n), default=0)


def grid_chunks(
    start: int, end: int, fine: tuple[int, ...] = _FINE_GRID
) -> Iterator[tuple[int, int]]:
    """Chunks [a, b) covering [start, end), cut at every boundary; `start` is one (or 0)."""
    a = start
    while a < end:
        nxt = next((b for b in fine if b > a), None)
        if nxt is None:
            nxt = (a // _COARSE_STEP + 1) * _COARSE_STEP
        b = min(nxt, end)
        yield a, b
        a = b


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens `a` and `b` share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n

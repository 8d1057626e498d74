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


# The lean decoder's grid: 16, 64, 512, then every 512. Its prompt chunks are GEMMs, which
# small chunks make slow, so it is coarser than llama.cpp's; the cut at 16 lets the default
# system prompt of a small model's chat template (SmolLM2's is ~26 tokens) be reused. Prompts
# that join the batch together run each chunk as one pass, so the cut costs one pass a group:
# measured on the multi-adapter bench (int8, AVX2), (16, 64, 512) ran 1.06x / 1.12x the
# tokens/s of (64, 512) over 32 / 8 adapters (medians of 4 alternating rounds).
LEAN_GRID = (16, 64, 512)
# A prompt joining the batch waits a step for another joining prompt's prefix only when at
# least this much of it would be reused: a shorter one costs less to compute than the wait.
LEAN_WAIT_TOKENS = 64


def grid_floor(n: int, fine: tuple[int, ...] = _FINE_GRID) -> int:
    """The largest chunk boundary <= n (0 when none)."""
    if n >= fine[-1]:
        return n // _COARSE_STEP * _COARSE_STEP
    return max((b for b in fine if b <= n), default=0)


def reusable(cached: Sequence[int], ids: Sequence[int], fine: tuple[int, ...] = _FINE_GRID) -> int:
    """Leading tokens of `ids` that the keys and values of prompt `cached` can give it: their
    common prefix, short of `ids`' last token (its logits pick the next one), down to a
    chunk boundary of `fine`."""
    return grid_floor(min(common_prefix(cached, ids), len(ids) - 1), fine)


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

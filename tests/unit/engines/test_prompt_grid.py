"""The fixed prompt chunk grid: a reused prefix always ends where a fresh evaluation cuts."""

from __future__ import annotations

from itertools import pairwise

import pytest

from loraflow.engines.prompt_grid import common_prefix, grid_chunks, grid_floor


@pytest.mark.parametrize("length", [1, 15, 16, 17, 50, 64, 65, 511, 512, 513, 1500, 4096])
def test_resuming_at_any_shared_boundary_cuts_the_rest_as_a_fresh_evaluation(length: int) -> None:
    fresh = list(grid_chunks(0, length))
    assert fresh[0][0] == 0 and fresh[-1][1] == length
    assert all(a < b <= a + 512 and b == c for (a, b), (c, _) in pairwise(fresh))
    assert fresh[-1][0] < fresh[-1][1]
    for shared in range(length):
        keep = grid_floor(shared)
        assert keep <= shared
        # Chunks evaluated after reusing `keep` tokens are exactly the fresh run's tail.
        assert list(grid_chunks(keep, length)) == [c for c in fresh if c[0] >= keep]


def test_boundaries_are_fine_early_and_coarse_late() -> None:
    assert [grid_floor(n) for n in (0, 15, 16, 47, 48, 100, 511, 512, 1100)] == [
        0, 0, 16, 32, 48, 64, 256, 512, 1024,
    ]  # fmt: skip
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2 and common_prefix([], [1]) == 0


def test_reuse_stops_short_of_the_last_token_on_a_boundary_of_the_grid() -> None:
    from loraflow.engines.prompt_grid import LEAN_GRID, reusable

    cached = list(range(100))
    assert reusable(cached, [*range(40), 7], LEAN_GRID) == 16
    assert reusable(cached, [*range(70), 7], LEAN_GRID) == 64
    assert reusable(cached, list(range(17)), LEAN_GRID) == 16  # the 17th is left to compute
    assert reusable(cached, list(range(16)), LEAN_GRID) == 0
    assert reusable(cached, [*range(40), 7]) == 32  # llama.cpp's finer grid

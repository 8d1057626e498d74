"""DARE-TIES: drop delta values at random (keep `density`, rescale), then TIES sign election."""

from __future__ import annotations

from loraflow.adapters.merge.factored import FactoredMethod
from loraflow.adapters.merge.task_vectors import Recipe


class DareTies(FactoredMethod):
    """DARE with TIES election (arXiv 2311.03099); seeded draws, so a merge can be repeated."""

    name = "dare_ties"
    description = "random drop (density, rescaled), then TIES sign election"
    recipe = Recipe(sparsify="random", elect=True, normalize=False)

"""DARE linear: drop delta values at random (keep `density`, rescale), then a weighted sum."""

from __future__ import annotations

from loraflow.adapters.merge.factored import FactoredMethod
from loraflow.adapters.merge.task_vectors import Recipe


class DareLinear(FactoredMethod):
    """DARE without sign election (arXiv 2311.03099); seeded draws, so it can be repeated."""

    name = "dare_linear"
    description = "random drop (density, rescaled), then a weighted sum"
    recipe = Recipe(sparsify="random", elect=False, normalize=False)

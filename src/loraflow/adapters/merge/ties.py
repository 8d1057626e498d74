"""TIES: keep each delta's largest values, elect a sign per value, average the agreeing ones."""

from __future__ import annotations

from loraflow.adapters.merge.factored import FactoredMethod
from loraflow.adapters.merge.task_vectors import Recipe


class Ties(FactoredMethod):
    """TIES (arXiv 2306.01708): magnitude trim, sign election, weighted mean of the agreeing."""

    name = "ties"
    description = "keep the largest values (density), elect signs, average agreeing values"
    recipe = Recipe(sparsify="magnitude", elect=True, normalize=True)

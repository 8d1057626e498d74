"""DARE-TIES: drop delta values at random (keep `density`, rescale), then TIES sign election."""

from __future__ import annotations

from loraflow.adapters.merge.peft_weighted import PeftWeightedMethod


class DareTies(PeftWeightedMethod):
    """DARE with TIES (arXiv 2311.03099); seeded, so a merge can be repeated exactly."""

    name = "dare_ties"
    description = "random drop (density, rescaled), then TIES sign election"
    combination_type = "dare_ties"

"""DARE linear: drop delta values at random (keep `density`, rescale), then a weighted sum."""

from __future__ import annotations

from loraflow.adapters.merge.peft_weighted import PeftWeightedMethod


class DareLinear(PeftWeightedMethod):
    """DARE without sign election (arXiv 2311.03099); seeded, so it can be repeated exactly."""

    name = "dare_linear"
    description = "random drop (density, rescaled), then a weighted sum"
    combination_type = "dare_linear"

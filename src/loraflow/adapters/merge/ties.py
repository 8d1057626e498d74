"""TIES: keep each delta's largest values, elect a sign per value, average the agreeing ones."""

from __future__ import annotations

from loraflow.adapters.merge.peft_weighted import PeftWeightedMethod


class Ties(PeftWeightedMethod):
    """TIES (arXiv 2306.01708); adapter results by PEFT, model results by mergekit."""

    name = "ties"
    description = "keep the largest values (density), elect signs, average agreeing values"
    combination_type = "ties"

"""Linear: the weighted mean of the adapters' deltas (mergekit's "linear", normalized)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import field_validator

from loraflow.adapters.merge.base import Into, WeightedParams, model_ref
from loraflow.adapters.merge.concat import ConcatMethod
from loraflow.adapters.merge.lora import LoraSource

if TYPE_CHECKING:
    import torch


class LinearParams(WeightedParams):
    """Weights, divided by their sum, so [1, 1] is the plain mean."""

    @field_validator("weights")
    @classmethod
    def _sum_not_zero(cls, value: list[float]) -> list[float]:
        if sum(value) == 0:
            raise ValueError(f"weights {value} sum to 0, so they cannot be normalized")
        return value


class Linear(ConcatMethod):
    """delta = sum_i w_i * delta_i / sum_i w_i, exact (ranks stacked)."""

    name = "linear"
    description = "weighted mean of the adapters (weights normalized to sum to 1)"
    params_model = LinearParams

    def coefficients(self, sources: list[LoraSource], module: str, params: Any) -> list[float]:
        total = sum(params.weights)
        return [w / total for w in params.weights]

    def mergekit_config(
        self, models: list[Path], base_model_dir: Path, params: Any
    ) -> dict[str, Any]:
        return {
            "merge_method": "linear",
            "models": [
                {"model": model_ref(m), "parameters": {"weight": w}}
                for m, w in zip(models, params.weights, strict=True)
            ],
        }

    def reference_delta(
        self,
        deltas: list[torch.Tensor],
        params: Any,
        *,
        into: Into,
        base: torch.Tensor | None,
        module: str = "",
        seed: int = 0,
    ) -> torch.Tensor:
        total = sum(params.weights)
        return sum(w / total * d for w, d in zip(params.weights, deltas, strict=True))

"""Task arithmetic: lambda times the weighted sum of the adapters' deltas (not normalized)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraflow.adapters.merge.base import Into, LambdaParams
from loraflow.adapters.merge.concat import ConcatMethod
from loraflow.adapters.merge.factored import task_vector_config
from loraflow.adapters.merge.lora import LoraSource

if TYPE_CHECKING:
    import torch


class TaskArithmetic(ConcatMethod):
    """delta = lambda * sum_i w_i * delta_i, exact (ranks stacked); one adapter scales it."""

    name = "task_arithmetic"
    description = "lambda times the weighted sum of the adapters' deltas"
    params_model = LambdaParams
    min_adapters = 1

    def coefficients(self, sources: list[LoraSource], module: str, params: Any) -> list[float]:
        return [params.lambda_ * w for w in params.weights]

    def mergekit_config(
        self, models: list[Path], base_model_dir: Path, params: Any
    ) -> dict[str, Any]:
        return task_vector_config(self.name, models, base_model_dir, params, density=False)

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
        return params.lambda_ * sum(w * d for w, d in zip(params.weights, deltas, strict=True))

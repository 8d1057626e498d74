"""SLERP of two adapters: spherical interpolation between their task vectors, per layer.

For an adapter result, each adapted layer's delta is interpolated on its own:
theta is the angle between the flattened deltas d1 and d2, and
delta = sin((1-t)*theta)/sin(theta) * d1 + sin(t*theta)/sin(theta) * d2,
falling back to (1-t)*d1 + t*d2 when the deltas are (anti)parallel (|cos| > 0.9995, as
mergekit) or one is zero. The result is still a weighted sum, so it is written exactly by
stacking ranks; the angle comes from the factors (r x r products), never the dense deltas.

For a model result, mergekit's SLERP interpolates the two full models (base + each
adapter) tensor by tensor, which is the usual meaning for models.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import field_validator

from loraflow.adapters.merge.base import Into, MergeParams, model_ref
from loraflow.adapters.merge.concat import ConcatMethod
from loraflow.adapters.merge.lora import LoraSource

if TYPE_CHECKING:
    import torch

DOT_THRESHOLD = 0.9995
EPS = 1e-8


class SlerpParams(MergeParams):
    """t: 0 gives the first adapter, 1 the second."""

    t: float = 0.5

    @field_validator("t")
    @classmethod
    def _t_in_range(cls, value: float) -> float:
        if not 0 <= value <= 1:
            raise ValueError(f"t={value!r} is outside [0, 1]; 0 is the first adapter, 1 the second")
        return value


def slerp_coefficients(t: float, dot: float, norm1: float, norm2: float) -> tuple[float, float]:
    """(a, b) so that a*v1 + b*v2 is the spherical interpolation of v1 and v2 at t."""
    if norm1 <= EPS or norm2 <= EPS:
        return 1 - t, t
    cos = max(-1.0, min(1.0, dot / (norm1 * norm2)))
    if abs(cos) > DOT_THRESHOLD:
        return 1 - t, t
    theta = math.acos(cos)
    sin_theta = math.sin(theta)
    return math.sin((1 - t) * theta) / sin_theta, math.sin(t * theta) / sin_theta


def slerp_dense(t: float, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of two tensors treated as flat vectors."""
    a, b = slerp_coefficients(t, float((v1 * v2).sum()), float(v1.norm()), float(v2.norm()))
    return a * v1 + b * v2


class Slerp(ConcatMethod):
    """Spherical interpolation between two adapters' deltas (see the module docstring)."""

    name = "slerp"
    description = "spherical interpolation between two adapters at t"
    params_model = SlerpParams
    min_adapters = 2
    max_adapters = 2

    def coefficients(self, sources: list[LoraSource], module: str, params: Any) -> list[float]:
        first, second = sources
        if module not in first.pairs or module not in second.pairs:
            return [1 - params.t, params.t]
        # <B1 A1, B2 A2>_F = sum((B1^T B2) * (A1 A2^T)): only r1 x r2 matrices are formed.
        a1, b1, s1 = _factors(first, module)
        a2, b2, s2 = _factors(second, module)
        dot = s1 * s2 * float(((b1.T @ b2) * (a1 @ a2.T)).sum())
        norm1 = abs(s1) * math.sqrt(max(float(((b1.T @ b1) * (a1 @ a1.T)).sum()), 0.0))
        norm2 = abs(s2) * math.sqrt(max(float(((b2.T @ b2) * (a2 @ a2.T)).sum()), 0.0))
        return list(slerp_coefficients(params.t, dot, norm1, norm2))

    def mergekit_config(
        self, models: list[Path], base_model_dir: Path, params: Any
    ) -> dict[str, Any]:
        return {
            "merge_method": "slerp",
            # mergekit's SLERP runs from its base model (t=0) to the other model (t=1).
            "base_model": model_ref(models[0]),
            "models": [{"model": model_ref(m)} for m in models],
            "parameters": {"t": params.t},
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
        d1, d2 = deltas
        if into == "adapter" or base is None:
            return slerp_dense(params.t, d1, d2)
        return slerp_dense(params.t, base + d1, base + d2) - base


def _factors(source: LoraSource, module: str) -> tuple[torch.Tensor, torch.Tensor, float]:
    pair = source.pairs[module]
    a = source.tensor(pair.a_key).double()
    b = source.tensor(pair.b_key).double()
    return a, b, source.scaling(module)

"""Sign/density merging of dense layer deltas, step for step as mergekit's task arithmetic.

For one layer, with d_i = scaling_i * B_i @ A_i (float64; zero for an adapter that does not
adapt the layer) and weight w_i, mergekit 0.1.5 (sparsify.py, generalized_task_arithmetic.py)
computes:
1. sparsify each d_i: "magnitude" (TIES) keeps the max(1, int(density * numel)) largest
   |values|; "random" (DARE) keeps each value with probability `density` and rescales the kept
   ones so that the layer's L1 norm is exactly what it was (mergekit's rescale, RescaleNorm.l1;
   skipped when either L1 norm is below 1e-7);
2. weigh: t_i = w_i * d_i;
3. elect (TIES, DARE-TIES): the sign of sum_i t_i per value (0 counts as +); only the t_i of
   that sign take part (a value pruned to 0 never does);
4. sum the taking-part t_i; a normalized method divides by the sum of their weights (by 1
   where none takes part); finally times lambda.

DARE draws (loraflow's protocol; mergekit's global-generator order over every tensor of the
model cannot be reproduced layer by layer): the mask of adapter i (0-based, in the order given)
at layer M (its module path, e.g. model.layers.0.self_attn.q_proj) is
torch.bernoulli(torch.full(shape, density, dtype=float32), generator=g) with g seeded by the
first 8 bytes (little-endian, top bit cleared) of sha256(f"{seed}:{M}:{i}"). Every mask depends
only on (seed, M, i), so the same seed gives the same adapter whatever layers are merged.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

Sparsify = Literal["magnitude", "random"]
# mergekit's eps of rescaled_masked_tensor: below it an L1 norm is not rescaled.
RESCALE_EPS = 1e-7


@dataclass(frozen=True)
class Recipe:
    """Which of the steps above a method runs (mergekit's method definitions)."""

    sparsify: Sparsify | None
    elect: bool
    normalize: bool


def draw_generator(seed: int, module: str, index: int) -> torch.Generator:
    """The generator of adapter `index`'s DARE mask at `module` (see the module docstring)."""
    import torch

    digest = hashlib.sha256(f"{seed}:{module}:{index}".encode()).digest()
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    return generator


def keep_largest(delta: torch.Tensor, density: float) -> torch.Tensor:
    """TIES trimming: the max(1, int(density * numel)) values of largest magnitude, others 0."""
    import torch

    if density >= 1:
        return delta
    k = max(1, int(density * delta.numel()))
    order = torch.argsort(delta.abs().reshape(-1), descending=True, stable=True)
    mask = torch.zeros(delta.numel(), dtype=delta.dtype)
    mask[order[:k]] = 1
    return delta * mask.reshape(delta.shape)


def drop_random(delta: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """DARE: keep each value with probability `density`, rescaled to the same L1 norm."""
    import torch

    if density >= 1:
        return delta
    mask = torch.bernoulli(
        torch.full(delta.shape, density, dtype=torch.float32), generator=generator
    )
    kept = delta * mask.to(delta.dtype)
    before, after = float(delta.abs().sum()), float(kept.abs().sum())
    if before < RESCALE_EPS or after < RESCALE_EPS:
        return kept
    return kept * (before / after)


def merge_layer(
    deltas: list[torch.Tensor | None],
    weights: list[float],
    recipe: Recipe,
    *,
    density: float,
    lambda_: float,
    seed: int,
    module: str,
) -> torch.Tensor:
    """The merged dense delta of one layer (float64); None in `deltas` means "not adapted"."""
    import torch

    shape = next(d.shape for d in deltas if d is not None)
    kept = []
    for index, delta in enumerate(deltas):
        if delta is None:
            kept.append(torch.zeros(shape, dtype=torch.float64))
        elif recipe.sparsify == "magnitude":
            kept.append(keep_largest(delta, density))
        elif recipe.sparsify == "random":
            kept.append(drop_random(delta, density, draw_generator(seed, module, index)))
        else:
            kept.append(delta)
    stacked = torch.stack(kept)
    w = torch.tensor(weights, dtype=torch.float64).reshape(-1, *([1] * len(shape)))
    weighted = stacked * w
    if recipe.elect:
        majority = torch.where(weighted.sum(dim=0) >= 0, 1.0, -1.0).to(torch.float64)
        mask = (weighted.sign() == majority).to(torch.float64)
        mixed = (weighted * mask).sum(dim=0)
        divisor = (w * mask).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = weighted.sum(dim=0)
        divisor = w.sum(dim=0).expand(shape).clone()
        divisor[divisor.abs() < 1e-8] = 1
    if recipe.normalize:
        mixed = mixed / divisor
    return mixed * lambda_

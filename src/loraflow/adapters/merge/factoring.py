"""Dense layer deltas back to LoRA factors by truncated SVD, one rank for every layer.

The rank is the smallest that keeps every layer within `tolerance` (relative Frobenius error
of B @ A against the dense delta), capped by the user's max_rank and the engine's
MAX_LORA_RANK. By Eckart-Young the truncated SVD is the best factoring at any rank, and its
error is sqrt(sum of the dropped squared singular values) / sqrt(sum of all of them).
One rank for all layers keeps adapter_config.json free of rank_pattern, which some engines
ignore; a layer that needs fewer ranks simply comes out more exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# Per layer: |B @ A - dense|_F <= DEFAULT_TOLERANCE * |dense|_F unless the rank cap forbids it.
DEFAULT_TOLERANCE = 1e-3


@dataclass
class Spectrum:
    """The leading singular triplets of one layer's dense delta, plus all singular values."""

    u: torch.Tensor  # (out, k)
    s: torch.Tensor  # (min(out, in),), all of them
    vh: torch.Tensor  # (k, in)

    def needed_rank(self, tolerance: float) -> int:
        """The smallest rank whose truncation error is within `tolerance` (0 for a zero delta)."""
        energy = self.s.pow(2)
        total = float(energy.sum())
        if total == 0:
            return 0
        # tail[r] = energy dropped when keeping r values; tail[len] = 0.
        tail = [max(total - float(c), 0.0) for c in energy.cumsum(0)]
        for rank, dropped in enumerate([total, *tail]):
            if math.sqrt(dropped) <= tolerance * math.sqrt(total):
                return rank
        return len(tail)

    def error_at(self, rank: int) -> float:
        """Relative Frobenius error of the rank-`rank` truncation (0 for a zero delta)."""
        energy = self.s.pow(2)
        total = float(energy.sum())
        if total == 0:
            return 0.0
        return math.sqrt(max(float(energy[rank:].sum()), 0.0) / total)


def spectrum(dense: torch.Tensor, keep: int) -> Spectrum:
    """SVD of `dense`, keeping only the `keep` leading vectors (the most any rank may use)."""
    import torch

    u, s, vh = torch.linalg.svd(dense.double(), full_matrices=False)
    return Spectrum(u=u[:, :keep].clone(), s=s, vh=vh[:keep].clone())


def factors(spec: Spectrum, rank: int, dtype: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) of shapes (rank, in) and (out, rank) with B @ A the truncation; zero-padded."""
    import torch

    have = min(rank, spec.u.shape[1])
    root = spec.s[:have].sqrt()
    a = root[:, None] * spec.vh[:have]
    b = spec.u[:, :have] * root[None, :]
    if have < rank:
        # Fewer singular vectors than the rank (a small layer): zero factors add nothing.
        a = torch.cat([a, a.new_zeros(rank - have, a.shape[1])])
        b = torch.cat([b, b.new_zeros(b.shape[0], rank - have)], dim=1)
    return a.to(dtype).contiguous(), b.to(dtype).contiguous()


@dataclass
class RankChoice:
    """The rank chosen for all layers and the truncation error it leaves in each."""

    rank: int
    cap: int
    tolerance: float
    max_rank: int | None
    engine_max_rank: int
    errors: dict[str, float] = field(default_factory=dict)

    @property
    def worst(self) -> tuple[str, float]:
        return max(self.errors.items(), key=lambda kv: kv[1], default=("", 0.0))

    def report(self) -> dict[str, Any]:
        tensor, error = self.worst
        return {
            "how": "dense result factored by truncated SVD",
            "rank": self.rank,
            "rank_cap": self.cap,
            "max_rank": self.max_rank,
            "engine_max_rank": self.engine_max_rank,
            "tolerance": self.tolerance,
            "max_relative_error": error,
            "worst_tensor": tensor,
            "within_tolerance": error <= self.tolerance,
            "relative_errors": dict(sorted(self.errors.items())),
        }


def rank_cap(max_rank: int | None, engine_max_rank: int) -> int:
    """The highest rank a result may take: the user's max_rank within MAX_LORA_RANK."""
    return min(engine_max_rank, max_rank) if max_rank is not None else engine_max_rank


def choose_rank(
    spectra: dict[str, Spectrum],
    *,
    tolerance: float,
    max_rank: int | None,
    engine_max_rank: int,
) -> RankChoice:
    """The smallest rank meeting `tolerance` in every layer, within the caps (at least 1)."""
    cap = rank_cap(max_rank, engine_max_rank)
    needed = max((s.needed_rank(tolerance) for s in spectra.values()), default=1)
    rank = max(1, min(needed, cap))
    choice = RankChoice(
        rank=rank, cap=cap, tolerance=tolerance, max_rank=max_rank, engine_max_rank=engine_max_rank
    )
    choice.errors = {f"{m}.weight": s.error_at(rank) for m, s in spectra.items()}
    return choice

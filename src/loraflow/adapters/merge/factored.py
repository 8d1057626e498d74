"""Sign/density methods (TIES, DARE): dense per-layer result, then LoRA factors by SVD.

TIES and DARE act value by value on the dense deltas, so they cannot be run on the A and B
factors one at a time (PEFT's non-SVD add_weighted_adapter does, which gave a relative error
of ~0.9 against mergekit's dense TIES). PEFT's "*_svd" combinations work on dense deltas but
divide TIES by the count of agreeing adapters instead of their weights (mergekit's rule),
rescale DARE by 1/density instead of to the same L1 norm, take a fixed rank instead of an
error bound and draw DARE masks from the global generator; hence task_vectors.py (mergekit's
steps) and factoring.py (rank from an error bound) here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import field_validator

from loraflow.adapters.merge.base import Into, MergeMethod, SparseParams, model_ref
from loraflow.adapters.merge.concat import common_dtype, save_adapter
from loraflow.adapters.merge.factoring import (
    DEFAULT_TOLERANCE,
    choose_rank,
    factors,
    rank_cap,
    spectrum,
)
from loraflow.adapters.merge.lora import PREFIX, LoraSource, check_plain_lora
from loraflow.adapters.merge.task_vectors import Recipe, merge_layer

if TYPE_CHECKING:
    import torch


class FactoredParams(SparseParams):
    """Sparse task-vector parameters plus the factoring bound of an adapter result."""

    max_rank: int | None = None
    max_error: float = DEFAULT_TOLERANCE

    @field_validator("max_rank")
    @classmethod
    def _rank_positive(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"max_rank={value!r} must be a rank of at least 1")
        return value

    @field_validator("max_error")
    @classmethod
    def _error_in_range(cls, value: float) -> float:
        if not 0 < value < 1:
            raise ValueError(
                f"max_error={value!r} is outside (0, 1); it is the relative Frobenius error "
                f"allowed per layer, e.g. 0.001"
            )
        return value


class FactoredMethod(MergeMethod):
    """A mergekit task-vector method whose adapter result is factored from the dense one."""

    recipe: ClassVar[Recipe]
    params_model = FactoredParams
    # Adapter results are checked against the same dense computation; model results come
    # from mergekit, whose DARE draws differ from loraflow's (see task_vectors.py).
    reference_for: ClassVar[tuple[Into, ...]] = ("adapter",)

    def dense_layer(
        self, deltas: list[torch.Tensor | None], params: Any, *, module: str, seed: int
    ) -> torch.Tensor:
        """The method's merged dense delta of one layer."""
        return merge_layer(
            deltas,
            list(params.weights),
            self.recipe,
            density=params.density,
            lambda_=params.lambda_,
            seed=seed,
            module=module,
        )

    def merge_lora(
        self,
        sources: list[LoraSource],
        params: Any,
        out_dir: Path,
        *,
        base_model_dir: Path,
        seed: int,
        engine_max_rank: int,
    ) -> dict[str, Any]:
        for source in sources:
            check_plain_lora(source, self.name)
        cap = rank_cap(params.max_rank, engine_max_rank)
        modules = sorted(set().union(*(s.pairs for s in sources)))
        spectra = {}
        for module in modules:
            deltas = [s.dense_delta(module) if module in s.pairs else None for s in sources]
            dense = self.dense_layer(deltas, params, module=module, seed=seed)
            spectra[module] = spectrum(dense, cap)
        choice = choose_rank(
            spectra,
            tolerance=params.max_error,
            max_rank=params.max_rank,
            engine_max_rank=engine_max_rank,
        )
        dtype = common_dtype(sources)
        tensors = {}
        for module, spec in spectra.items():
            a, b = factors(spec, choice.rank, dtype)
            tensors[f"{PREFIX}{module}.lora_A.weight"] = a
            tensors[f"{PREFIX}{module}.lora_B.weight"] = b
        save_adapter(tensors, sources, modules, choice.rank, out_dir, base_model_dir=base_model_dir)
        report = choice.report()
        if not report["within_tolerance"]:
            report["warning"] = cap_warning(self.name, report)
        return report

    def mergekit_config(
        self, models: list[Path], base_model_dir: Path, params: Any
    ) -> dict[str, Any]:
        return task_vector_config(self.name, models, base_model_dir, params, density=True)

    def reference_delta(
        self,
        deltas: list[torch.Tensor],
        params: Any,
        *,
        into: Into,
        base: torch.Tensor | None,
        module: str = "",
        seed: int = 0,
    ) -> torch.Tensor | None:
        if into != "adapter":
            return None
        return self.dense_layer(list(deltas), params, module=module, seed=seed)


def cap_warning(method: str, report: dict[str, Any]) -> str:
    """One sentence on a result the rank cap kept above its error bound."""
    caps = [f"MAX_LORA_RANK={report['engine_max_rank']}"]
    if report["max_rank"] is not None:
        caps.insert(0, f"max_rank={report['max_rank']}")
    return (
        f"the {method} adapter is approximate: at rank {report['rank']} (capped by "
        f"{' and '.join(caps)}) {report['worst_tensor']} is off by "
        f"{report['max_relative_error']:.3g} of its dense result (relative Frobenius error), "
        f"above the bound {report['tolerance']:g}; merge with --into model (API: "
        f'"into": "model") for the exact result, or allow a higher rank'
    )


def task_vector_config(
    method: str, models: list[Path], base_model_dir: Path, params: Any, *, density: bool
) -> dict[str, Any]:
    """mergekit config for a task-vector method: deltas of `models` against the base."""
    entries = []
    for model, weight in zip(models, params.weights, strict=True):
        values: dict[str, Any] = {"weight": weight}
        if density:
            values["density"] = params.density
        entries.append({"model": model_ref(model), "parameters": values})
    return {
        "merge_method": method,
        "base_model": model_ref(base_model_dir),
        "models": entries,
        "parameters": {"lambda": params.lambda_},
    }

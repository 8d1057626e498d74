"""Exact adapter merges: stack the adapters' ranks so that B @ A equals sum_i c_i * delta_i."""

from __future__ import annotations

import json
from abc import abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraflow.adapters.merge.base import MergeMethod
from loraflow.adapters.merge.lora import PREFIX, LoraSource, check_plain_lora
from loraflow.errors import InvalidInput
from loraflow.models.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS

if TYPE_CHECKING:
    import torch


class ConcatMethod(MergeMethod):
    """A method whose merged delta is a per-layer weighted sum of the adapters' deltas.

    PEFT's add_weighted_adapter(combination_type="cat") does the same stacking, but it needs
    the base model in memory, takes one weight per adapter (SLERP needs one per layer) and
    mis-scales rsLoRA sources; stacking the saved factors directly avoids all three.
    """

    reference_for = ("adapter", "model")

    @abstractmethod
    def coefficients(self, sources: list[LoraSource], module: str, params: Any) -> list[float]:
        """c_i of each adapter at `module`; adapters that do not adapt it get 0."""

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
        rank = stacked_rank(sources)
        if rank > engine_max_rank:
            raise InvalidInput(
                f"{self.name!r} stacks the adapters' ranks into rank {rank}, above "
                f"MAX_LORA_RANK={engine_max_rank}, so the result could not be registered",
                hint="merge with --into model, or raise MAX_LORA_RANK",
            )
        write_concatenated(
            sources,
            lambda module: self.coefficients(sources, module, params),
            out_dir,
            base_model_dir=base_model_dir,
        )
        return {"how": "ranks stacked (exact)", "rank": rank, "max_relative_error": 0.0}


def stacked_rank(sources: list[LoraSource]) -> int:
    """The rank of the stacked adapter: the largest per-layer sum of the sources' ranks."""
    modules = set().union(*(s.pairs for s in sources))
    return max(sum(s.pairs[m].rank for s in sources if m in s.pairs) for m in modules)


def write_concatenated(
    sources: list[LoraSource], coefficients: Any, out_dir: Path, *, base_model_dir: Path
) -> None:
    """Save one adapter whose layer deltas are sum_i c_i * scaling_i * B_i @ A_i."""
    import torch

    modules = sorted(set().union(*(s.pairs for s in sources)))
    # One rank for every layer: layers adapted by fewer sources are padded with zero
    # factors, which add nothing, so the config needs no rank_pattern.
    rank = stacked_rank(sources)
    dtype = common_dtype(sources)
    tensors: dict[str, torch.Tensor] = {}
    for module in modules:
        coefs = coefficients(module)
        a_parts, b_parts = [], []
        for source, coef in zip(sources, coefs, strict=True):
            pair = source.pairs.get(module)
            if pair is None:
                continue
            scale = float(coef) * source.scaling(module)
            # The factor goes on A only, as in PEFT's "cat"; the product is what counts.
            a_parts.append(source.tensor(pair.a_key).double() * scale)
            b_parts.append(source.tensor(pair.b_key).double())
        a = torch.cat(a_parts, dim=0)
        b = torch.cat(b_parts, dim=1)
        pad = rank - a.shape[0]
        if pad:
            a = torch.cat([a, a.new_zeros(pad, a.shape[1])], dim=0)
            b = torch.cat([b, b.new_zeros(b.shape[0], pad)], dim=1)
        tensors[f"{PREFIX}{module}.lora_A.weight"] = a.to(dtype).contiguous()
        tensors[f"{PREFIX}{module}.lora_B.weight"] = b.to(dtype).contiguous()
    save_adapter(tensors, sources, modules, rank, out_dir, base_model_dir=base_model_dir)


def common_dtype(sources: list[LoraSource]) -> torch.dtype:
    """The sources' factor dtype where they share one, else float32."""
    import torch

    dtypes = {s.tensor(p.a_key).dtype for s in sources for p in s.pairs.values()}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32


def save_adapter(
    tensors: dict[str, torch.Tensor],
    sources: list[LoraSource],
    modules: list[str],
    rank: int,
    out_dir: Path,
    *,
    base_model_dir: Path,
) -> None:
    """Write the merged factors and their adapter_config.json (see merged_config) to `out_dir`."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    config = merged_config(sources, modules, rank, base_model_dir)
    (out_dir / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2), encoding="utf-8")


def merged_config(
    sources: list[LoraSource], modules: list[str], rank: int, base_model_dir: Path
) -> dict[str, Any]:
    """adapter_config.json of a stacked adapter: scaling 1, targets exactly `modules`."""
    config = dict(sources[0].config)
    # lora_alpha == r and no rsLoRA make PEFT's scaling exactly 1: the coefficients and the
    # sources' scalings are already inside A.
    config.update(r=rank, lora_alpha=rank, use_rslora=False, rank_pattern={}, alpha_pattern={})
    config.update(use_dora=False, modules_to_save=None, inference_mode=True)
    if any(set(s.pairs) != set(modules) for s in sources):
        # The sources adapt different layers: list the union by full path, which PEFT
        # matches exactly, instead of guessing a short-name pattern.
        config.update(
            target_modules=modules,
            layers_to_transform=None,
            layers_pattern=None,
            exclude_modules=None,
        )
    named = next((s.base_model for s in sources if s.base_model), "")
    config["base_model_name_or_path"] = named or str(base_model_dir)
    return config

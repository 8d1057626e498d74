"""Adapter merges done by PEFT's add_weighted_adapter (TIES and DARE on the LoRA factors)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar

from loraflow.adapters.merge.base import MergeMethod, SparseParams, model_ref
from loraflow.adapters.merge.lora import LoraSource, check_plain_lora
from loraflow.adapters.merge.models import attach_adapter, load_causal_lm
from loraflow.errors import InvalidInput
from loraflow.models.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS

MERGED_NAME = "merged"


class PeftWeightedMethod(MergeMethod):
    """A sparsifying task-vector method: PEFT for adapter results, mergekit for models.

    PEFT applies TIES/DARE to the A and B factors separately (its documented behaviour); the
    product is close to, not equal to, TIES/DARE on the dense deltas, so no dense reference
    is checked for these results.
    """

    combination_type: ClassVar[str]
    params_model = SparseParams

    def merge_lora(
        self,
        sources: list[LoraSource],
        params: Any,
        out_dir: Path,
        *,
        base_model_dir: Path,
        seed: int,
    ) -> None:
        for source in sources:
            check_plain_lora(source, self.name)
        ranks = sorted({p.rank for s in sources for p in s.pairs.values()})
        if len(ranks) > 1:
            raise InvalidInput(
                f"merge method {self.name!r} into an adapter needs LoRA factors of one rank "
                f"(PEFT's add_weighted_adapter), got ranks {ranks}",
                hint='use into="model", or linear / task_arithmetic, which accept any ranks',
            )
        # PEFT has no lambda; it scales each weight linearly, so folding it in is exact.
        weights = [w * params.lambda_ for w in params.weights]
        combine_with_peft(
            sources, weights, self.combination_type, params.density, base_model_dir, out_dir, seed
        )

    def mergekit_config(
        self, models: list[Path], base_model_dir: Path, params: Any
    ) -> dict[str, Any]:
        return task_vector_config(self.name, models, base_model_dir, params, density=True)


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


def combine_with_peft(
    sources: list[LoraSource],
    weights: list[float],
    combination_type: str,
    density: float,
    base_model_dir: Path,
    out_dir: Path,
    seed: int,
) -> None:
    """Load the adapters onto the base, add PEFT's weighted merge and save only that one."""
    import torch

    names = [f"source_{i}" for i in range(len(sources))]
    model = load_causal_lm(base_model_dir)
    peft_model = attach_adapter(model, sources[0].path, names[0])
    try:
        for name, source in zip(names[1:], sources[1:], strict=True):
            peft_model.load_adapter(str(source.path), adapter_name=name, is_trainable=False)
        # DARE drops values at random: a seeded, forked generator makes it reproducible
        # without disturbing the caller's random state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            peft_model.add_weighted_adapter(
                names, weights, MERGED_NAME, combination_type=combination_type, density=density
            )
        with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
            peft_model.save_pretrained(
                tmp, selected_adapters=[MERGED_NAME], safe_serialization=True
            )
            saved = Path(tmp) / MERGED_NAME
            out_dir.mkdir(parents=True, exist_ok=True)
            for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
                shutil.move(str(saved / name), str(out_dir / name))
    except ValueError as exc:
        raise InvalidInput(
            f"PEFT could not merge the adapters ({combination_type}): {exc}"
        ) from exc
    finally:
        del peft_model, model
    config_path = out_dir / ADAPTER_CONFIG
    config = json.loads(config_path.read_text(encoding="utf-8"))
    # add_weighted_adapter bakes each source's scaling into the factors and sets
    # lora_alpha = r, but keeps use_rslora from the first source, which would rescale
    # the result by sqrt(r) on load.
    config["use_rslora"] = False
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")

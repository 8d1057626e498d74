"""Model results: fold each adapter into the base, then let mergekit merge the full models."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loraflow.adapters.merge.base import MergeMethod
from loraflow.adapters.merge.lora import LoraSource, first_line
from loraflow.adapters.merge.models import (
    attach_adapter,
    load_causal_lm,
    load_tokenizer,
    saved_dtype,
)
from loraflow.errors import InvalidInput

# Files beside the weights that a served model needs and mergekit does not write.
EXTRA_FILES = ("generation_config.json",)


def merge_full_models(
    method: MergeMethod,
    sources: list[LoraSource],
    params: Any,
    *,
    base_model_dir: Path,
    out_dir: Path,
    work_dir: Path,
    seed: int,
    report: Callable[[str, float], None],
) -> None:
    """Write the merged full model (safetensors, config, tokenizer) into `out_dir`."""
    dtype = saved_dtype(base_model_dir)
    models = []
    for i, source in enumerate(sources):
        report(
            f"merging adapter {i + 1}/{len(sources)} into the base model",
            0.05 + 0.45 * i / len(sources),
        )
        folded = work_dir / f"with-adapter-{i}"
        fold_adapter(base_model_dir, source.path, folded, dtype)
        models.append(folded)
    report(f"merging {len(models)} models with mergekit ({method.name})", 0.5)
    run_mergekit(method.mergekit_config(models, base_model_dir, params), out_dir, seed)
    for folded in models:
        shutil.rmtree(folded, ignore_errors=True)
    tokenizer = load_tokenizer(base_model_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out_dir))
    for name in EXTRA_FILES:
        if (base_model_dir / name).is_file():
            shutil.copy2(base_model_dir / name, out_dir / name)


def fold_adapter(base_model_dir: Path, adapter_dir: Path, out_dir: Path, dtype: Any) -> None:
    """Save base + adapter as one plain model (PEFT's merge_and_unload) in `dtype`."""
    model = load_causal_lm(base_model_dir)
    try:
        model = attach_adapter(model, adapter_dir).merge_and_unload()
        # Merged in float32, saved in the base model's own dtype, as the user's base is.
        model.to(dtype).save_pretrained(str(out_dir), safe_serialization=True)
    finally:
        # Freed now by reference counting, before the next adapter's copy of the base loads
        # (also on failure, where the traceback would otherwise keep it alive).
        del model


def run_mergekit(config: dict[str, Any], out_dir: Path, seed: int) -> None:
    """Run mergekit's merge of full models from a config dict into `out_dir`."""
    import torch
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    options = MergeOptions(
        random_seed=seed,  # DARE drops values at random; the seed makes it repeatable
        copy_tokenizer=False,  # the base model's tokenizer is saved afterwards
        write_model_card=False,  # loraflow.json records the merge instead
        trust_remote_code=False,
        safe_serialization=True,
        quiet=True,
        device="cpu",
    )
    try:
        merge_config = MergeConfiguration.model_validate(config)
        # mergekit seeds the global generators; keep the caller's torch state as it was.
        with torch.random.fork_rng(devices=[]):
            run_merge(merge_config, str(out_dir), options)
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise InvalidInput(
            f"mergekit could not merge the models ({config['merge_method']}): {first_line(exc)}"
        ) from exc

"""The "not a silent no-op" logits check run on every merge result before it is published."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraflow.adapters.merge.base import Into
from loraflow.adapters.merge.models import (
    attach_adapter,
    load_causal_lm,
    load_tokenizer,
)
from loraflow.errors import InvalidInput

if TYPE_CHECKING:
    import torch

PROMPTS = ("The capital of France is", "Once upon a time,", "def add(a, b):")
# A result whose logits move by no more than this on every prompt counts as the base model.
NO_OP_TOLERANCE = 1e-6


def logits_check(base_model_dir: Path, result_dir: Path, into: Into) -> dict[str, Any]:
    """Compare the result's logits with the base's on short prompts; raise on NaN or no change."""
    import torch

    base = load_causal_lm(base_model_dir)
    model = None
    try:
        prompts = prompt_ids(base_model_dir, base.get_input_embeddings().num_embeddings)
        base_logits = _logits(base, prompts)
        if into == "adapter":
            model = attach_adapter(base, result_dir)
        else:
            # Dropped before the result loads, so two full models are never held at once
            # (plain reference counting frees them; gc runs once at the end of the merge).
            base = None
            model = load_causal_lm(result_dir)
        result_logits = _logits(model, prompts)
    finally:
        del base, model
    finite = all(bool(torch.isfinite(r).all()) for r in result_logits)
    if not finite:
        raise InvalidInput(
            f"the merged {into} produces NaN or infinite logits; an input adapter holds "
            f"extreme values or the merge parameters overflow"
        )
    change = max(
        float((r - b).abs().max()) for r, b in zip(result_logits, base_logits, strict=True)
    )
    checks = {
        "prompts": len(prompts),
        "max_abs_logit_change_vs_base": change,
        "no_op_tolerance": NO_OP_TOLERANCE,
        "finite": finite,
    }
    if change <= NO_OP_TOLERANCE:
        raise InvalidInput(
            f"the merged {into} gives the same logits as the base model (largest change "
            f"{change:.3g} <= {NO_OP_TOLERANCE:g} on {len(prompts)} prompts): the adapters "
            f"cancel out or carry no change",
            hint="check the weights (opposite signs cancel) and that the adapters were trained",
        )
    return checks


def prompt_ids(base_model_dir: Path, vocab_size: int) -> list[list[int]]:
    """Token ids of the check prompts (fixed ids when the base has no tokenizer)."""
    tokenizer = load_tokenizer(base_model_dir)
    if tokenizer is None:
        return [[(17 * p + 31 * i + 1) % vocab_size for i in range(6)] for p in range(len(PROMPTS))]
    out = []
    for text in PROMPTS:
        ids = [i for i in tokenizer(text)["input_ids"] if 0 <= i < vocab_size]
        out.append(ids or [0])
    return out


def _logits(model: Any, prompts: list[list[int]]) -> list[torch.Tensor]:
    import torch

    with torch.no_grad():
        return [model(input_ids=torch.tensor([ids])).logits[0].float() for ids in prompts]

"""The "not a silent no-op" checks run on every merge result before it is published."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraflow.adapters.merge.base import Into, MergeMethod
from loraflow.adapters.merge.lora import LoraSource, read_source
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
# Dense-reference rule per tensor, eps being the result dtype's machine epsilon:
# |got - ref| <= RTOL * max|ref| + 64 * eps * sum_i max|delta_i| (+ 4 * eps * max|W| for a
# model, W the stored merged weight). The eps terms are rounding room: for a layer where the
# adapters cancel out (ref = 0) and for storing base + delta in the model's dtype.
REFERENCE_RTOL = 1e-3
REFERENCE_RULE = (
    "per tensor |got - ref| <= rtol * max|ref| + 64 * eps * sum_i max|delta_i| "
    "(+ 4 * eps * max|W| for models)"
)


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


def reference_check(
    method: MergeMethod,
    params: Any,
    sources: list[LoraSource],
    base_model_dir: Path,
    result_dir: Path,
    into: Into,
) -> dict[str, Any] | None:
    """Compare each adapted weight of the result with its dense reference; None if inexact."""
    import torch

    if not method.has_reference:
        return None
    if into == "model" and any(s.other_keys or s.config.get("use_dora") for s in sources):
        return {"skipped": "an adapter holds DoRA or full-layer tensors; no dense reference"}
    result = read_source(result_dir) if into == "adapter" else None
    base_files = _tensor_files(base_model_dir)
    result_files = _tensor_files(result_dir) if result is None else {}
    modules = sorted(set().union(*(s.pairs for s in sources)))
    worst = {"ratio": 0.0, "error": 0.0, "tensor": ""}
    for module in modules:
        key = f"{module}.weight"
        deltas = _source_deltas(sources, module)
        if result is not None:
            if module not in result.pairs:
                raise InvalidInput(f"the merged adapter lacks layer {module!r}")
            got = result.dense_delta(module)
            stored = result.tensor(result.pairs[module].a_key)
            expected = method.reference_delta(deltas, params, into=into, base=None)
            floor = 0.0
        else:
            base = _read(base_files, key).double()
            stored = _read(result_files, key)
            got = stored.double() - base
            expected = method.reference_delta(deltas, params, into=into, base=base)
            floor = 4 * torch.finfo(stored.dtype).eps * float(stored.double().abs().max())
        if expected is None or got.shape != expected.shape:
            raise InvalidInput(
                f"the merged {into} has {key} of shape {list(got.shape)}, "
                f"expected {list(deltas[0].shape)}"
            )
        eps = torch.finfo(stored.dtype).eps
        rtol = max(REFERENCE_RTOL, 8 * eps)
        sources_scale = sum(float(d.abs().max()) for d in deltas)
        allowed = rtol * float(expected.abs().max()) + 64 * eps * sources_scale + floor + 1e-12
        error = float((got - expected).abs().max())
        if error / allowed > worst["ratio"]:
            worst = {"ratio": error / allowed, "error": error, "tensor": key}
        if error > allowed:
            raise InvalidInput(
                f"the merged {into} does not match its dense reference (base + expected "
                f"delta): {key} is off by {error:.3g}, more than the allowed {allowed:.3g}"
            )
    if result is not None:
        result.release()
    return {
        "tensors": len(modules),
        "max_abs_error": worst["error"],
        "worst_error_ratio": worst["ratio"],
        "worst_tensor": worst["tensor"],
        "rtol": REFERENCE_RTOL,
        "rule": REFERENCE_RULE,
    }


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


def _source_deltas(sources: list[LoraSource], module: str) -> list[torch.Tensor]:
    import torch

    deltas = [s.dense_delta(module) if module in s.pairs else None for s in sources]
    shape = next(d.shape for d in deltas if d is not None)
    return [torch.zeros(shape, dtype=torch.float64) if d is None else d for d in deltas]


def _tensor_files(folder: Path) -> dict[str, Path]:
    from loraflow.adapters.inspect import tensor_shapes

    return {key: f for f in sorted(folder.glob("*.safetensors")) for key in tensor_shapes(f)}


def _read(files: dict[str, Path], key: str) -> torch.Tensor:
    from safetensors import safe_open

    if key not in files:
        raise InvalidInput(f"the merged model has no tensor {key}")
    with safe_open(str(files[key]), framework="pt") as fh:
        return fh.get_tensor(key)

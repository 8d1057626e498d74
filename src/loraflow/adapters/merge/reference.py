"""The dense-reference check: each adapted weight of the result against its expected value.

An adapter result is folded into the base by PEFT (merge_and_unload, float32), as a user
would serve it, and a model result is read from its files; either way got = W_result - W_base
is compared with the method's dense reference for every adapted layer.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraflow.adapters.merge.base import Into, MergeMethod
from loraflow.adapters.merge.lora import LoraSource
from loraflow.adapters.merge.models import attach_adapter, load_causal_lm
from loraflow.errors import InvalidInput

if TYPE_CHECKING:
    import torch

# Exact methods, per tensor, eps being the result dtype's machine epsilon:
# |got - ref| <= RTOL * max|ref| + 64 * eps * sum_i max|delta_i| + 4 * eps * max|W|, W the
# stored merged weight. The eps terms are rounding room: for a layer where the adapters cancel
# out (ref = 0) and for storing base + delta in the weight's dtype.
REFERENCE_RTOL = 1e-3
REFERENCE_RULE = (
    "per tensor |got - ref| <= rtol * max|ref| + 64 * eps * sum_i max|delta_i| + 4 * eps * max|W|"
)
# Factored (SVD) adapter results: |got - ref|_F <= (e * (1 + 1e-3)) * |ref|_F + sqrt(n) times
# the same rounding room, e being the truncation error the factoring reported for the tensor.
FACTORED_RULE = (
    "per tensor |got - ref|_F <= reported truncation error * 1.001 * |ref|_F "
    "+ sqrt(numel) * (64 * eps * sum_i max|delta_i| + 4 * eps * max|W|)"
)


def reference_check(
    method: MergeMethod,
    params: Any,
    sources: list[LoraSource],
    base_model_dir: Path,
    result_dir: Path,
    into: Into,
    *,
    seed: int,
    factoring: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Compare each adapted weight of the result with its dense reference; None if none."""
    if into not in method.reference_for:
        return None
    if into == "model" and any(s.other_keys or s.config.get("use_dora") for s in sources):
        return {"skipped": "an adapter holds DoRA or full-layer tensors; no dense reference"}
    modules = sorted(set().union(*(s.pairs for s in sources)))
    base_files = _tensor_files(base_model_dir)
    keys = [f"{m}.weight" for m in modules]
    stored = _folded(base_model_dir, result_dir, keys) if into == "adapter" else None
    result_files = _tensor_files(result_dir) if stored is None else {}
    truncation = (factoring or {}).get("relative_errors")
    worst = {"ratio": 0.0, "error": 0.0, "tensor": ""}
    relative: dict[str, float] = {}
    for module, key in zip(modules, keys, strict=True):
        deltas = _source_deltas(sources, module)
        weight = stored[key] if stored is not None else _read(result_files, key, into)
        base = _read(base_files, key, "base model").double()
        got = weight.double() - base
        expected = method.reference_delta(
            deltas,
            params,
            into=into,
            base=base if into == "model" else None,
            module=module,
            seed=seed,
        )
        if expected is None or got.shape != expected.shape:
            raise InvalidInput(
                f"the merged {into} has {key} of shape {list(got.shape)}, "
                f"expected {list(deltas[0].shape)}"
            )
        eps = float(_eps(weight))
        rounding = 64 * eps * sum(float(d.abs().max()) for d in deltas)
        rounding += 4 * eps * float(weight.double().abs().max())
        diff = got - expected
        ref_norm = float(expected.norm())
        relative[key] = float(diff.norm()) / ref_norm if ref_norm else float(diff.norm())
        if truncation is None:
            rtol = max(REFERENCE_RTOL, 8 * eps)
            error = float(diff.abs().max())
            allowed = rtol * float(expected.abs().max()) + rounding + 1e-12
        else:
            error = float(diff.norm())
            bound = float(truncation.get(key, 0.0)) * (1 + 1e-3)
            allowed = bound * ref_norm + math.sqrt(diff.numel()) * rounding + 1e-12
        if error / allowed > worst["ratio"]:
            worst = {"ratio": error / allowed, "error": error, "tensor": key}
        if error > allowed:
            raise InvalidInput(
                f"the merged {into} does not match its dense reference (base + expected "
                f"delta): {key} is off by {error:.3g}, more than the allowed {allowed:.3g}"
            )
    return {
        "tensors": len(modules),
        "max_relative_error": max(relative.values(), default=0.0),
        "relative_errors": relative,
        "worst_error_ratio": worst["ratio"],
        "worst_tensor": worst["tensor"],
        "max_error": worst["error"],
        "rtol": REFERENCE_RTOL,
        "rule": REFERENCE_RULE if truncation is None else FACTORED_RULE,
    }


def _folded(base_model_dir: Path, adapter_dir: Path, keys: list[str]) -> dict[str, torch.Tensor]:
    """The `keys` weights of base + adapter folded by PEFT's merge_and_unload (float32)."""
    model = attach_adapter(load_causal_lm(base_model_dir), adapter_dir).merge_and_unload()
    try:
        state = model.state_dict()
        missing = [k for k in keys if k not in state]
        if missing:
            raise InvalidInput(f"the merged adapter folded into the base lacks {missing[0]}")
        return {k: state[k].detach().clone() for k in keys}
    finally:
        del model


def _eps(tensor: torch.Tensor) -> float:
    import torch

    return torch.finfo(tensor.dtype).eps


def _source_deltas(sources: list[LoraSource], module: str) -> list[torch.Tensor]:
    import torch

    deltas = [s.dense_delta(module) if module in s.pairs else None for s in sources]
    shape = next(d.shape for d in deltas if d is not None)
    return [torch.zeros(shape, dtype=torch.float64) if d is None else d for d in deltas]


def _tensor_files(folder: Path) -> dict[str, Path]:
    from loraflow.adapters.inspect import tensor_shapes

    return {key: f for f in sorted(folder.glob("*.safetensors")) for key in tensor_shapes(f)}


def _read(files: dict[str, Path], key: str, what: str) -> torch.Tensor:
    from safetensors import safe_open

    if key not in files:
        raise InvalidInput(f"the {what} has no tensor {key}")
    with safe_open(str(files[key]), framework="pt") as fh:
        return fh.get_tensor(key)

"""Export a LoRA adapter merged into its base model, checked to reproduce base+adapter."""

from __future__ import annotations

import gc
import importlib.util
import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from loraflow.adapters.inspect import (
    ADAPTER_PREFIX,
    LoraLayout,
    check_fits,
    group_lora,
    sha256_file,
    split_lora_key,
)
from loraflow.errors import Conflict, InvalidInput, LoraflowError, ModelLoadError
from loraflow.models.adapters import ADAPTER_WEIGHTS, check_adapter_folder
from loraflow.models.load import resolve_device
from loraflow.models.pretrained import pretrained
from loraflow.permissions import share_tree

Quantization = Literal["8bit", "4bit"]
QUANTIZATIONS: tuple[str, ...] = ("8bit", "4bit")
Progress = Callable[[str, int, int], None]

METADATA_FILE = "loraflow.json"
# Short, varied prompts: enough positions to see any real adapter change in the logits.
CHECK_PROMPTS = ("The capital of France is", "def add(a, b):", "Once upon a time, a small robot")
# Merging adds B@A into W once instead of computing it per forward pass; in fp32 the two paths
# differ by rounding only (~1e-4 on SmolLM2 logits), far below any trained adapter's effect.
FP32_LOGIT_ATOL = 1e-3


class ExportCheckFailed(LoraflowError):
    """An export was written but does not behave like base model + adapter."""

    http_status = 500


@dataclass
class ExportResult:
    """Where a merged model went and the numbers that show it carries the adapter."""

    output_dir: Path
    adapter_dir: Path
    adapter_sha256: str
    base_model_dir: Path
    quantization: str | None
    device: str
    prompts: list[str]
    tolerance: float
    max_diff_vs_adapter: float
    max_diff_vs_base: float
    size_bytes: int
    seconds: float
    quantized_check: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON-ready values."""
        data = asdict(self)
        for key in ("output_dir", "adapter_dir", "base_model_dir"):
            data[key] = str(data[key])
        return data


@dataclass
class LoraTensors:
    """The LoRA pairs of one adapter file, keyed by the base model's module name."""

    config: dict[str, Any]
    pairs: dict[str, tuple[Any, Any]]
    kinds: dict[str, str]
    extra: dict[str, Any]
    layout: LoraLayout


def export_merged_model(
    adapter_dir: Path,
    base_model_dir: Path,
    output_dir: Path,
    *,
    quantization: Quantization | None = None,
    progress: Progress | None = None,
    device: str = "auto",
) -> ExportResult:
    """Merge the adapter into the base model and save it as a standalone safetensors folder."""
    started = time.monotonic()
    adapter_dir, base_model_dir = Path(adapter_dir), Path(base_model_dir)
    output_dir = Path(output_dir)
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise InvalidInput(f"quantization {quantization!r} is not one of {[None, *QUANTIZATIONS]}")
    if quantization is not None:
        require_bitsandbytes(quantization)
    steps = 7 if quantization else 6
    report = _reporter(progress, steps)

    report("checking adapter and base model", 0)
    _check_output_free(output_dir)
    lora = read_lora_tensors(adapter_dir)
    check_lora_shapes(lora, adapter_dir, base_model_dir)
    refuse_no_op(lora, adapter_dir)
    adapter_sha = sha256_file(adapter_dir / ADAPTER_WEIGHTS)
    device = resolve_device(device)

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    with _staging(output_dir) as staging:
        report("loading base model", 1)
        tokenizer = _load_tokenizer(base_model_dir)
        model = _load_fp32(base_model_dir, device)
        inputs = [tokenizer(p, return_tensors="pt").input_ids.to(device) for p in CHECK_PROMPTS]
        base_logits = _logits(model, inputs)

        report("applying adapter", 2)
        peft_model = _apply_adapter(model, adapter_dir, device)
        adapter_logits = _logits(peft_model, inputs)

        report("merging", 3)
        merged = peft_model.merge_and_unload(safe_merge=True)
        del peft_model

        report("saving", 4)
        fp32_dir = staging / "fp32"
        merged.save_pretrained(fp32_dir)
        tokenizer.save_pretrained(fp32_dir)
        del merged, model
        _free(device)

        report("checking the export against base + adapter", 5)
        reloaded = _load_fp32(fp32_dir, device)
        export_logits = _logits(reloaded, inputs)
        del reloaded
        _free(device)
        vs_adapter = _max_abs_diff(export_logits, adapter_logits)
        vs_base = _max_abs_diff(export_logits, base_logits)
        _check_fp32(vs_adapter, vs_base, adapter_dir)

        final_dir, quantized_check = fp32_dir, {}
        if quantization:
            report(f"quantizing to {quantization}", 6)
            final_dir = staging / "quantized"
            quantized_check = _quantize(
                fp32_dir, final_dir, quantization, device, inputs, adapter_logits, base_logits
            )
            tokenizer.save_pretrained(final_dir)

        result = ExportResult(
            output_dir=output_dir,
            adapter_dir=adapter_dir,
            adapter_sha256=adapter_sha,
            base_model_dir=base_model_dir,
            quantization=quantization,
            device=device,
            prompts=list(CHECK_PROMPTS),
            tolerance=FP32_LOGIT_ATOL,
            max_diff_vs_adapter=vs_adapter,
            max_diff_vs_base=vs_base,
            size_bytes=0,
            seconds=0.0,
            quantized_check=quantized_check,
        )
        result.seconds = round(time.monotonic() - started, 3)
        _write_metadata(final_dir, result, lora.config)
        result.size_bytes = _folder_size(final_dir)
        _publish(final_dir, output_dir)
    report("done", steps)
    return result


def require_bitsandbytes(quantization: str) -> None:
    """Raise a clear error when bitsandbytes, needed for 8/4-bit exports, is missing."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise InvalidInput(
            f"quantization {quantization!r} needs the bitsandbytes package, which is not "
            f"installed: pip install 'loraflow[quantization]'",
            hint="or export without quantization",
        )


def read_lora_tensors(adapter_dir: Path) -> LoraTensors:
    """Load a PEFT LoRA adapter's config and weights (safetensors only), grouped per module."""
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    config = check_adapter_folder(adapter_dir)
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise InvalidInput(
            f"adapter at {adapter_dir} is a {peft_type} adapter; only LORA adapters can be exported"
        )
    try:
        state = load_file(str(adapter_dir / ADAPTER_WEIGHTS))
    except Exception as exc:  # safetensors raises its own error type for damaged files
        raise InvalidInput(f"{adapter_dir / ADAPTER_WEIGHTS} cannot be read: {exc}") from exc
    layout = group_lora(state, adapter_dir)
    pairs: dict[str, tuple[Any, Any]] = {}
    extra: dict[str, Any] = {}
    for key, tensor in state.items():
        split = split_lora_key(key)
        if split is None:
            extra[key.removeprefix(ADAPTER_PREFIX)] = tensor
            continue
        module, _, half = split
        a, b = pairs.get(module, (None, None))
        pairs[module] = (tensor, b) if half == "A" else (a, tensor)
    kinds = dict(layout.kinds)
    return LoraTensors(config=config, pairs=pairs, kinds=kinds, extra=extra, layout=layout)


def check_lora_shapes(lora: LoraTensors, adapter_dir: Path, base_dir: Path) -> None:
    """Raise naming the tensor and both shapes when the adapter does not fit the base model."""
    trained_for = str(lora.config.get("base_model_name_or_path") or "unknown")
    hint = "export with the base model the adapter was trained on"
    check_fits(lora.layout, adapter_dir, base_dir, trained_for, strict=True, hint=hint)


def refuse_no_op(lora: LoraTensors, adapter_dir: Path) -> None:
    """Raise when the adapter cannot change the model: every lora_A or lora_B is all zeros."""
    alpha = float(lora.config.get("lora_alpha", 1) or 0)
    patterns = lora.config.get("alpha_pattern") or {}
    if alpha == 0 and not any(float(v) for v in patterns.values()):
        raise InvalidInput(
            f"adapter at {adapter_dir} has lora_alpha 0, so it scales every change to zero; "
            f"exporting it would give back the unchanged base model"
        )
    if lora.extra:
        return  # full replacement weights (modules_to_save) change the model by themselves
    if not any(bool(a.any()) and bool(b.any()) for a, b in lora.pairs.values()):
        raise InvalidInput(
            f"adapter at {adapter_dir} has no effect: in every one of its "
            f"{len(lora.pairs)} LoRA layers lora_A or lora_B is all zeros (an untrained or "
            f"freshly initialised adapter); exporting it would give back the unchanged base model",
            hint="train the adapter first",
        )


def _check_output_free(output_dir: Path) -> None:
    if output_dir.is_file() or output_dir.is_symlink():
        raise Conflict(f"export target {output_dir} exists and is not a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()):
        raise Conflict(
            f"export target {output_dir} already exists and is not empty",
            hint="choose a new output folder or remove the old export",
        )


@contextmanager
def _staging(output_dir: Path) -> Iterator[Path]:
    """A hidden sibling folder that is removed whatever happens; the export moves out of it."""
    staging = output_dir.parent / f".{output_dir.name}.export-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish(ready: Path, output_dir: Path) -> None:
    # safetensors writes 0600: readable by other users, like a plain save_pretrained.
    share_tree(ready)
    # A rename is atomic: readers see no folder or a complete export, never half of one.
    try:
        if output_dir.is_dir():
            output_dir.rmdir()  # empty, checked above; fails if someone filled it since
        os.rename(ready, output_dir)
    except OSError as exc:
        raise Conflict(f"export target {output_dir} was created by someone else meanwhile") from exc


def _reporter(progress: Progress | None, total: int) -> Callable[[str, int], None]:
    def report(message: str, done: int) -> None:
        if progress is not None:
            progress(message, done, total)

    return report


def _load_tokenizer(base_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            str(base_model_dir), local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(
            f"base model folder {base_model_dir} has no usable tokenizer, which a merged "
            f"export must include: {exc}"
        ) from exc


def _load_fp32(folder: Path, device: str, quantization_config: Any = None) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {
        "dtype": torch.float32,
        "local_files_only": True,
        "trust_remote_code": False,
        # Never unpickle: only safetensors are read from user folders.
        "use_safetensors": True,
    }
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    if device != "cpu":
        kwargs["device_map"] = {"": device}
    try:
        model = pretrained(AutoModelForCausalLM.from_pretrained, str(folder), **kwargs)
    except (OSError, ValueError, RuntimeError, ImportError, KeyError) as exc:
        raise ModelLoadError(f"could not load the model in {folder}: {exc}") from exc
    model.eval()
    return model


def _apply_adapter(model: Any, adapter_dir: Path, device: str) -> Any:
    from peft import PeftConfig, PeftModel

    try:
        config = PeftConfig.from_pretrained(str(adapter_dir))
        config.inference_mode = True
        peft_model = PeftModel(model, config, adapter_name="default")
        result = peft_model.load_adapter(
            str(adapter_dir), adapter_name="default", is_trainable=False, torch_device=device
        )
    except Exception as exc:  # PEFT and torch raise many kinds; all mean "does not fit"
        raise ModelLoadError(f"could not apply the adapter at {adapter_dir}: {exc}") from exc
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    if missing:
        raise ModelLoadError(
            f"adapter at {adapter_dir} misses weights for its own layers, e.g. {missing[:3]}"
        )
    peft_model.eval()
    return peft_model


def _logits(model: Any, inputs: list[Any]) -> list[Any]:
    import torch

    # TF32 matmuls (if someone enabled them) would blur differences the check must see.
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with torch.inference_mode():
            return [model(input_ids=ids).logits.float().cpu() for ids in inputs]
    finally:
        torch.set_float32_matmul_precision(precision)


def _max_abs_diff(left: list[Any], right: list[Any]) -> float:
    return max(float((a - b).abs().max()) for a, b in zip(left, right, strict=True))


def _mean_abs_diff(left: list[Any], right: list[Any]) -> float:
    total = sum(float((a - b).abs().sum()) for a, b in zip(left, right, strict=True))
    return total / sum(a.numel() for a in left)


def _check_fp32(vs_adapter: float, vs_base: float, adapter_dir: Path) -> None:
    if not math.isfinite(vs_adapter) or vs_adapter > FP32_LOGIT_ATOL:
        raise ExportCheckFailed(
            f"the merged export of {adapter_dir} does not reproduce base model + adapter: its "
            f"logits differ by up to {vs_adapter:.3g} (allowed {FP32_LOGIT_ATOL:g}) on "
            f"{len(CHECK_PROMPTS)} check prompts; nothing was written"
        )
    if vs_base <= FP32_LOGIT_ATOL:
        raise InvalidInput(
            f"adapter at {adapter_dir} has no measurable effect: the merged model's logits differ "
            f"from the base model's by at most {vs_base:.3g} (threshold {FP32_LOGIT_ATOL:g}) on "
            f"{len(CHECK_PROMPTS)} check prompts; an export would be the unchanged base model, so "
            f"nothing was written",
            hint="train the adapter (longer) first",
        )


def _quantize(
    fp32_dir: Path,
    out_dir: Path,
    quantization: str,
    device: str,
    inputs: list[Any],
    adapter_logits: list[Any],
    base_logits: list[Any],
) -> dict[str, float]:
    import torch
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        compute = torch.float32 if device == "cpu" else torch.bfloat16
        config = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute
        )
    model = _load_fp32(fp32_dir, device, quantization_config=config)
    model.save_pretrained(out_dir)
    del model
    _free(device)
    reloaded = _load_fp32(out_dir, device)
    logits = _logits(reloaded, inputs)
    del reloaded
    _free(device)
    check = {
        "mean_diff_vs_adapter": _mean_abs_diff(logits, adapter_logits),
        "mean_diff_vs_base": _mean_abs_diff(logits, base_logits),
        "max_diff_vs_adapter": _max_abs_diff(logits, adapter_logits),
    }
    if not all(math.isfinite(v) for v in check.values()):
        raise ExportCheckFailed(
            f"the {quantization} export gives non-finite logits; nothing was written"
        )
    # Quantization moves every weight, so an exact match is impossible; what must hold is that
    # the result stays nearer base + adapter than the plain base model, or the adapter is lost.
    if check["mean_diff_vs_adapter"] >= check["mean_diff_vs_base"]:
        raise ExportCheckFailed(
            f"after {quantization} quantization the export is closer to the base model "
            f"(mean logit difference {check['mean_diff_vs_base']:.3g}) than to base + adapter "
            f"({check['mean_diff_vs_adapter']:.3g}): quantization erased the adapter's change; "
            f"nothing was written",
            hint="export without quantization",
        )
    return check


def _write_metadata(folder: Path, result: ExportResult, adapter_config: dict) -> None:
    data = {
        "type": "merged_model",
        "created_at": datetime.now(UTC).isoformat(),
        "source_adapter": str(result.adapter_dir.resolve()),
        "adapter_sha256": result.adapter_sha256,
        "adapter_base_model": adapter_config.get("base_model_name_or_path"),
        "lora_r": adapter_config.get("r"),
        "lora_alpha": adapter_config.get("lora_alpha"),
        "target_modules": adapter_config.get("target_modules"),
        "base_model": str(result.base_model_dir.resolve()),
        "dtype": f"bitsandbytes-{result.quantization}" if result.quantization else "float32",
        "quantization": result.quantization,
        "check": {
            "prompts": result.prompts,
            "tolerance": result.tolerance,
            "max_logit_diff_vs_adapter": result.max_diff_vs_adapter,
            "max_logit_diff_vs_base": result.max_diff_vs_base,
            **({"quantized": result.quantized_check} if result.quantized_check else {}),
        },
    }
    (folder / METADATA_FILE).write_text(
        json.dumps(data, indent=2, ensure_ascii=False, default=str), encoding="utf-8"
    )


def _folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()

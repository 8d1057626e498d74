"""Device plan and LoRA model construction: fp32 or bf16 (as measured) on CPU, bf16 + 4-bit
(QLoRA) on CUDA."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from loraflow.hardware import auto_training_precision, training_precision
from loraflow.models.load import load_model_and_tokenizer, resolve_device
from loraflow.models.resolve import ResolvedModel
from loraflow.training.params import TrainParams

# GPU sizes (GiB as torch reports them) of the seed's presets, and the 12 GB+ max length.
SMALL_GPU_GIB = 5.5
BATCH_8_GPU_GIB = 7.5
LONG_GPU_GIB = 11.0
LONG_MAX_LEN = 1024


def plan_device(
    p: TrainParams, gpu_bytes: int | None = None, profile_dir: Path | None = None
) -> dict[str, Any]:
    """Device, precision, quantization, checkpointing and the batch presets for these params.

    `gpu_bytes` stands for the GPU's memory (default: what torch reports for GPU 0); the
    seed's GPU-size presets apply only when the job runs on CUDA. `profile_dir` holds this
    host's cached micro-benchmark, which precision 'auto' on CPU reads (measuring it once);
    without it 'auto' on CPU means fp32.
    """
    import torch

    device = resolve_device(p.device)
    cuda = device.startswith("cuda")
    has_bnb = importlib.util.find_spec("bitsandbytes") is not None
    quant = p.quantization == "4bit" or (p.quantization == "auto" and cuda and has_bnb)
    # On CPU checkpointing only trades time for memory the machine does not need.
    auto = p.gradient_checkpointing == "auto"
    checkpointing = cuda if auto else p.gradient_checkpointing == "on"
    bf16 = cpu_bf16(p.precision, profile_dir) if not cuda else _cuda_bf16(p.precision)
    why = "no GPU found; " if p.device == "auto" else ""
    label = f"CPU ({why}{'bf16, ' if bf16 else ''}expect minutes per epoch on small models)"
    batch, accum, max_len = p.batch_size, p.grad_accum, p.max_len
    if cuda:
        if gpu_bytes is None:
            gpu_bytes = torch.cuda.get_device_properties(0).total_memory
        label = f"CUDA GPU ({gpu_bytes / 2**30:.0f} GiB)"
        batch, accum = fit_batch(batch, accum, gpu_bytes)
        max_len = fit_max_len(max_len, gpu_bytes)
    n = p.num_processes
    if n > 1:
        label = f"{n} CUDA GPUs" if cuda else f"{n} CPU processes (gloo, for testing)"
        if accum % n == 0:
            # Each process takes its share of the accumulation: the effective batch, and so
            # the optimisation, stays that of one process; the steps just run in parallel.
            accum //= n
    return {
        "device": device,
        "quantization": "4bit" if quant else None,
        "checkpointing": checkpointing,
        "bf16": bf16,
        "precision": "bf16" if bf16 else "fp32",
        "label": label,
        "batch_size": batch,
        "grad_accum": accum,
        "max_len": max_len,
        "effective_batch": batch * accum * n,
    }


def cpu_bf16(setting: str, profile_dir: Path | None) -> bool:
    """Whether CPU training runs under bf16 autocast: the setting, or what measured faster.

    bf16 on an AVX2-only CPU is emulated and made a step ~40x slower (DESIGN.md), while an
    AVX-512 BF16 host ran it 2.2x faster: only a measurement on this host can tell.
    """
    if setting == "auto":
        return profile_dir is not None and auto_training_precision(profile_dir) == "bf16"
    return training_precision(setting, {}) == "bf16"


def _cuda_bf16(setting: str) -> bool:
    import torch

    if setting == "fp32":
        return False
    return bool(torch.cuda.is_bf16_supported())


def fit_batch(batch: int, accum: int, gpu_bytes: int) -> tuple[int, int]:
    """Scale the micro-batch to GPU memory, keeping the effective batch (batch * accum).

    The defaults are the seed's 6 GB preset (batch 4); its 8 GB preset is batch 8. So a
    card under 6 GB halves the micro-batch and one of 8 GB or more doubles it, trading
    accumulation steps so the optimisation is the same. A card's reported size is a little
    under its nominal one (an "8 GB" card reports ~7.8 GiB), hence the margins.
    """
    gib = gpu_bytes / 2**30
    if gib < SMALL_GPU_GIB and batch > 1:
        return batch // 2, accum * 2
    if gib >= BATCH_8_GPU_GIB and accum % 2 == 0:
        return batch * 2, accum // 2
    return batch, accum


def fit_max_len(max_len: int, gpu_bytes: int) -> int:
    """The seed's 12 GB+ preset: the default max length 512 becomes 1024.

    Only the default is raised: a job that sets another max_len keeps it.
    """
    if max_len == TrainParams.max_len and gpu_bytes / 2**30 >= LONG_GPU_GIB:
        return LONG_MAX_LEN
    return max_len


def build_lora_model(
    resolved: ResolvedModel, p: TrainParams, plan: dict[str, Any], init: Path | None = None
) -> Any:
    """Load the base model for `plan` and wrap it with a fresh LoRA adapter, or with the
    adapter at `init` (trainable: the run continues its weights)."""
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    model, tokenizer = load_model_and_tokenizer(resolved, plan["device"], plan["quantization"])
    model.config.use_cache = False
    if plan["quantization"]:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=plan["checkpointing"]
        )
    elif plan["checkpointing"]:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    if init is not None:
        continued = PeftModel.from_pretrained(model, init, is_trainable=True)
        continued.train()
        return continued, tokenizer
    config = LoraConfig(
        r=p.rank,
        lora_alpha=p.alpha,
        lora_dropout=p.dropout,
        target_modules=p.targets(),
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    peft_model.train()
    return peft_model, tokenizer

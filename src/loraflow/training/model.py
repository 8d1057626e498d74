"""Device plan and LoRA model construction: fp32 on CPU, bf16 + 4-bit (QLoRA) on CUDA."""

from __future__ import annotations

import importlib.util
from typing import Any

from loraflow.models.load import load_model_and_tokenizer, resolve_device
from loraflow.models.resolve import ResolvedModel
from loraflow.training.params import TrainParams


def plan_device(p: TrainParams) -> dict[str, Any]:
    """Device, precision, quantization and checkpointing for this machine and these params."""
    import torch

    device = resolve_device(p.device)
    cuda = device.startswith("cuda")
    has_bnb = importlib.util.find_spec("bitsandbytes") is not None
    quant = p.quantization == "4bit" or (p.quantization == "auto" and cuda and has_bnb)
    # On CPU checkpointing only trades time for memory the machine does not need.
    auto = p.gradient_checkpointing == "auto"
    checkpointing = cuda if auto else p.gradient_checkpointing == "on"
    bf16 = cuda and torch.cuda.is_bf16_supported()
    label = "CUDA GPU" if cuda else "CPU (no GPU found; expect minutes per epoch on small models)"
    batch, accum = p.batch_size, p.grad_accum
    if cuda:
        batch, accum = fit_batch(batch, accum, torch.cuda.get_device_properties(0).total_memory)
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
        "label": label,
        "batch_size": batch,
        "grad_accum": accum,
        "effective_batch": batch * accum * n,
    }


def fit_batch(batch: int, accum: int, gpu_bytes: int) -> tuple[int, int]:
    """Scale the micro-batch to GPU memory, keeping the effective batch (batch * accum).

    The presets are tuned for a 6 GB card: smaller cards halve the micro-batch, cards of
    24 GB or more double it, trading accumulation steps so the optimisation is the same.
    """
    gib = gpu_bytes / 2**30
    if gib < 6 and batch > 1:
        return batch // 2, accum * 2
    if gib >= 24 and accum % 2 == 0:
        return batch * 2, accum // 2
    return batch, accum


def build_lora_model(resolved: ResolvedModel, p: TrainParams, plan: dict[str, Any]) -> Any:
    """Load the base model for `plan` and wrap it with a fresh LoRA adapter."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model, tokenizer = load_model_and_tokenizer(resolved, plan["device"], plan["quantization"])
    model.config.use_cache = False
    if plan["quantization"]:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=plan["checkpointing"]
        )
    elif plan["checkpointing"]:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
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

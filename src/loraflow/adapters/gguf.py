"""Write a PEFT LoRA adapter as a llama.cpp LoRA GGUF file (what convert_lora_to_gguf.py writes)."""

from __future__ import annotations

import math
import os
import re
import uuid
from pathlib import Path
from typing import Any

from loraflow.adapters.export import (
    LoraTensors,
    check_lora_shapes,
    read_lora_tensors,
    refuse_no_op,
)
from loraflow.adapters.inspect import read_base_config
from loraflow.errors import Conflict, InvalidInput

# Hugging Face architectures that llama.cpp's converter handles as its "llama" model.
LLAMA_FAMILY = ("LlamaForCausalLM", "MistralForCausalLM")
GGUF_ARCH = "llama"


def export_gguf_adapter(adapter_dir: Path, base_model_dir: Path, output_path: Path) -> Path:
    """Write the adapter as a float32 llama.cpp LoRA GGUF to use with the base model's GGUF."""
    import gguf

    adapter_dir, base_model_dir = Path(adapter_dir), Path(base_model_dir)
    output_path = Path(output_path)
    if output_path.suffix.lower() != ".gguf":
        raise InvalidInput(f"GGUF output path {output_path} must end in .gguf")
    if output_path.exists():
        raise Conflict(f"GGUF output {output_path} already exists", hint="choose a new file name")
    config = read_base_config(base_model_dir)
    arch = _architecture(config, base_model_dir)
    lora = read_lora_tensors(adapter_dir)
    check_lora_shapes(lora, adapter_dir, base_model_dir)
    refuse_no_op(lora, adapter_dir)
    _check_llama_cpp_can_hold(lora, adapter_dir)

    n_layers = int(config["num_hidden_layers"])
    n_head = int(config["num_attention_heads"])
    n_kv_head = int(config.get("num_key_value_heads") or n_head)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    alpha = float(lora.config.get("lora_alpha") or 0) or 1.0

    tensors: list[tuple[str, Any]] = []
    for module in sorted(lora.pairs, key=_natural_key):
        target = names.get_name(f"{module}.weight", try_suffixes=(".weight",))
        if target is None:
            raise InvalidInput(
                f"adapter at {adapter_dir} changes {module!r}, which llama.cpp's {GGUF_ARCH!r} "
                f"model has no tensor for"
            )
        if module == "lm_head" and config.get("tie_word_embeddings", False):
            raise InvalidInput(
                f"adapter at {adapter_dir} changes lm_head, but {arch} ties lm_head to the token "
                f"embeddings and llama.cpp ignores LoRAs on it; retrain without lm_head"
            )
        a, b = lora.pairs[module]
        a, b = a.float(), b.float() * _scale_fix(lora, module, rank=a.shape[0], alpha=alpha)
        if module.endswith(".q_proj"):
            b = permute_rows(b, n_head, n_head)
        elif module.endswith(".k_proj"):
            b = permute_rows(b, n_head, n_kv_head)
        # PyTorch layout goes in unchanged: GGUF stores dims reversed, which is the order
        # llama.cpp checks (a: [n_in, r], b: [r, n_out]).
        tensors.append((f"{target}.lora_a", a.contiguous().numpy()))
        tensors.append((f"{target}.lora_b", b.contiguous().numpy()))

    output_path.parent.mkdir(parents=True, exist_ok=True)
    partial = output_path.with_name(f".{output_path.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        writer = gguf.GGUFWriter(str(partial), arch=GGUF_ARCH)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_name(adapter_dir.name)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        for name, data in tensors:
            writer.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType.F32)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(partial, output_path)
    finally:
        partial.unlink(missing_ok=True)
    return output_path


def permute_rows(weight: Any, n_head: int, n_head_kv: int | None) -> Any:
    """Reorder q/k output rows from Hugging Face's rotary layout to llama.cpp's."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _architecture(config: dict[str, Any], base_model_dir: Path) -> str:
    archs = config.get("architectures") or []
    arch = archs[0] if archs else config.get("model_type", "unknown")
    if arch not in LLAMA_FAMILY:
        raise InvalidInput(
            f"base model {base_model_dir} is a {arch!r}; GGUF LoRA export supports the Llama "
            f"family: {list(LLAMA_FAMILY)}",
            hint="export a merged model instead",
        )
    return arch


def _check_llama_cpp_can_hold(lora: LoraTensors, adapter_dir: Path) -> None:
    if lora.config.get("use_dora"):
        raise InvalidInput(
            f"adapter at {adapter_dir} is a DoRA adapter; llama.cpp loads plain LoRA only"
        )
    if lora.extra:
        raise InvalidInput(
            f"adapter at {adapter_dir} also holds full or bias weights "
            f"({', '.join(sorted(lora.extra)[:3])}); a llama.cpp LoRA file holds only "
            f"lora_A/lora_B pairs",
            hint="retrain without modules_to_save / lora_bias, or export a merged model",
        )
    embedded = sorted(m for m, kind in lora.kinds.items() if kind == "embedding")
    if embedded:
        raise InvalidInput(
            f"adapter at {adapter_dir} has LoRA on the embedding layer ({embedded[0]}), which GGUF "
            f"LoRA export does not support; export a merged model instead"
        )


def _scale_fix(lora: LoraTensors, module: str, *, rank: int, alpha: float) -> float:
    """Factor folded into lora_b so llama.cpp's alpha/rank scale equals PEFT's scale."""
    from peft.utils.other import get_pattern_key

    config = lora.config
    patterns = config.get("alpha_pattern") or {}
    default = config.get("lora_alpha") or 0
    module_alpha = float(patterns.get(get_pattern_key(list(patterns), module), default))
    divisor = math.sqrt(rank) if config.get("use_rslora") else rank
    peft_scale = module_alpha / divisor
    return peft_scale / (alpha / rank)


def _natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]

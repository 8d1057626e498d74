"""Loading the base model and tokenizer for merges: offline, safetensors-only, fp32."""

from __future__ import annotations

import gc
import re
from pathlib import Path
from typing import Any

from loraflow.adapters.merge.lora import first_line
from loraflow.errors import ModelLoadError
from loraflow.models.pretrained import pretrained

LOAD_ERRORS = (OSError, ValueError, RuntimeError, KeyError, ImportError)
# torch's load_state_dict message for one tensor of the wrong shape.
_SIZE_MISMATCH = re.compile(
    r"size mismatch for (\S+?): copying a param with shape torch\.Size\(\[([^\]]*)\]\) "
    r"from checkpoint, the shape in current model is torch\.Size\(\[([^\]]*)\]\)"
)


def load_causal_lm(path: Path) -> Any:
    """A causal LM from a safetensors folder in float32 (exact arithmetic on any device)."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = pretrained(
            AutoModelForCausalLM.from_pretrained,
            str(path),
            dtype=torch.float32,
            use_safetensors=True,
            local_files_only=True,
            trust_remote_code=False,
        )
    except LOAD_ERRORS as exc:
        raise ModelLoadError(f"could not load the model at {path}: {exc}") from exc
    model.eval()
    return model


def attach_adapter(model: Any, adapter_dir: Path, name: str = "default") -> Any:
    """`model` wrapped by PEFT with the adapter at `adapter_dir` loaded (safetensors)."""
    from peft import PeftModel

    # PEFT reads adapter_model.safetensors whenever it exists, and merge inputs are checked
    # to have it, so no pickle is ever loaded here.
    try:
        return PeftModel.from_pretrained(
            model, str(adapter_dir), adapter_name=name, is_trainable=False
        )
    except LOAD_ERRORS as exc:
        raise ModelLoadError(
            f"PEFT could not load adapter {Path(adapter_dir).name}: {load_error_text(exc)}"
        ) from exc


def load_error_text(exc: BaseException) -> str:
    """One sentence from PEFT's or torch's load error, naming the tensor where it says one."""
    text = str(exc)
    size = _SIZE_MISMATCH.search(text)
    if size:
        key, got, want = size.groups()
        return (
            f"tensor {key} has shape [{got}] in the adapter file, but the layer built from "
            f"its adapter_config.json needs [{want}]"
        )
    return first_line(exc)


def load_tokenizer(path: Path) -> Any | None:
    """The tokenizer saved in `path`, or None when the folder has none."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=False
        )
    except LOAD_ERRORS:
        return None


def saved_dtype(path: Path) -> Any:
    """The torch dtype a model folder's config.json declares (float32 when unset)."""
    import torch
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(value, str):
        value = getattr(torch, value, None)
    return value if isinstance(value, torch.dtype) and value.is_floating_point else torch.float32


def free_memory() -> None:
    """Give freed model memory back after a merge step."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass

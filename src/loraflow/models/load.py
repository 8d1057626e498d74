"""Load a resolved base model and its tokenizer onto a device, offline and safetensors-only."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from loraflow.errors import ConfigError, ModelLoadError
from loraflow.models.pretrained import pretrained
from loraflow.models.resolve import ResolvedModel

DEVICES = ("cpu", "auto", "cuda")
QUANTIZATIONS = ("int8", "4bit")
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt")


def resolve_device(device: str) -> str:
    """Map a DEVICE setting to a concrete torch device: "cpu" or "cuda"."""
    value = device.strip().lower()
    if value not in DEVICES and not value.startswith("cuda:"):
        raise ConfigError(f"DEVICE={device!r} is not one of {list(DEVICES)}")
    if value == "cpu":
        return "cpu"
    import torch

    available = torch.cuda.is_available()
    if value == "auto":
        return "cuda" if available else "cpu"
    if not available:
        raise ConfigError(
            f"DEVICE={device!r} but no CUDA GPU is available to torch",
            hint="set DEVICE=cpu or DEVICE=auto",
        )
    return value


def load_model_and_tokenizer(
    resolved: ResolvedModel,
    device: str = "cpu",
    quantization: str | None = None,
    *,
    half: bool = True,
    memory_fraction: float = 1.0,
) -> tuple[Any, Any]:
    """Load model and tokenizer for `resolved`; the model is in eval mode on `device`.

    On CUDA, `half` (ENABLE_FP16) loads bf16 or fp16 instead of fp32, and `memory_fraction`
    (CUDA_MEMORY_FRACTION) caps what this process may allocate on the GPU.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(device)
    kwargs: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
    if resolved.kind == "gguf":
        if quantization:
            raise ConfigError(
                f"quantization {quantization!r} cannot be applied to a .gguf model",
                hint="set ENABLE_QUANTIZATION=false or use a safetensors model folder",
            )
        kwargs["gguf_file"] = resolved.gguf_file
    else:
        _check_safetensors_only(resolved.path)
    tokenizer = _load_tokenizer(AutoTokenizer, resolved, kwargs)

    model_kwargs = dict(kwargs)
    if resolved.kind == "gguf":
        from transformers import GgufConfig

        model_kwargs["quantization_config"] = GgufConfig(dequantize=True)
    else:
        # Never unpickle user files: a pickle can run code on load.
        model_kwargs["use_safetensors"] = True
        if quantization:
            model_kwargs["quantization_config"] = _quantization_config(quantization, device)
    if device == "cpu":
        # Half precision is slow and lossy on CPUs; fp32 is the safe default there.
        model_kwargs["dtype"] = torch.float32
    else:
        model_kwargs["dtype"] = cuda_dtype(half)
        model_kwargs["device_map"] = {"": device}
        limit_gpu_memory(device, memory_fraction)
    try:
        model = pretrained(AutoModelForCausalLM.from_pretrained, resolved.path, **model_kwargs)
    except torch.cuda.OutOfMemoryError as exc:
        raise _out_of_memory(resolved) from exc
    except (OSError, ValueError, RuntimeError, ImportError, KeyError) as exc:
        if "out of memory" in str(exc).lower():
            raise _out_of_memory(resolved) from exc
        raise ModelLoadError(
            f"could not load model {resolved.display_name!r} from {resolved.path}: {exc}"
        ) from exc
    model.eval()
    return model, tokenizer


def cuda_dtype(half: bool) -> Any:
    """The dtype of a model on CUDA: bf16 where the GPU has it, else fp16; fp32 if not `half`."""
    import torch

    if not half:
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def limit_gpu_memory(device: str, fraction: float) -> None:
    """Cap this process's allocations on `device` to `fraction` of its memory (1: no cap)."""
    if fraction >= 1.0:
        return
    import torch

    torch.cuda.set_per_process_memory_fraction(fraction, torch.device(device))


def _load_tokenizer(auto_tokenizer: Any, resolved: ResolvedModel, kwargs: dict) -> Any:
    try:
        tokenizer = auto_tokenizer.from_pretrained(resolved.path, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(
            f"could not load the tokenizer of {resolved.display_name!r} from {resolved.path}: {exc}"
        ) from exc
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        # Generation needs a pad id; reusing EOS is the usual choice for decoder-only models.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _check_safetensors_only(folder: Path) -> None:
    if any(folder.glob("*.safetensors")):
        return
    pickles = sorted({p.name for pattern in PICKLE_PATTERNS for p in folder.glob(pattern)})
    if pickles:
        raise ModelLoadError(
            f"model folder {folder} has only pickle weights ({', '.join(pickles)}); loraflow "
            f"loads only *.safetensors because pickle files can run code when loaded",
            hint="convert the weights to safetensors (model.save_pretrained(..., "
            "safe_serialization=True)) in a trusted environment",
        )
    raise ModelLoadError(f"model folder {folder} has no *.safetensors weight files")


def _quantization_config(quantization: str, device: str) -> Any:
    if quantization not in QUANTIZATIONS:
        raise ConfigError(f"QUANTIZATION_TYPE={quantization!r} is not one of {list(QUANTIZATIONS)}")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(
            f"quantization {quantization!r} needs the bitsandbytes package, which is not installed",
            hint="pip install loraflow[quantization], or set ENABLE_QUANTIZATION=false",
        )
    import torch
    from transformers import BitsAndBytesConfig

    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = torch.float32 if device == "cpu" else torch.bfloat16
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute
    )


def _out_of_memory(resolved: ResolvedModel) -> ModelLoadError:
    return ModelLoadError(
        f"the GPU ran out of memory loading {resolved.display_name!r}",
        hint="set DEVICE=cpu, ENABLE_QUANTIZATION=true, or choose a smaller BASE_MODEL_NAME",
    )

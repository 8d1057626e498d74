"""LoRA adapters for llama.cpp: PEFT folders converted once to GGUF, loaded as adapter handles."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from loraflow.errors import EngineUnavailable, ModelLoadError
from loraflow.locks import file_lock

# (PEFT adapter folder, output .gguf path) -> the written file. Injected by the services layer,
# because the converter (adapters/gguf.py) sits above the engines in the import layers.
ConvertLora = Callable[[Path, Path], Path]
# PEFT adapter folder -> hex digest of the files serving it depends on.
Checksum = Callable[[Path], str]


class GGUFLoraCache:
    """GGUF copies of PEFT adapters under `root`, one file per adapter checksum."""

    def __init__(self, root: Path, convert: ConvertLora, checksum: Checksum) -> None:
        self.root = root
        self._convert = convert
        self._checksum = checksum

    def path_for(self, folder: Path) -> Path:
        """The cached GGUF of adapter `folder`, converting it first when it is not there yet."""
        key = self._checksum(folder)
        out = self.root / f"{key}.gguf"
        if out.is_file():
            return out
        # Processes sharing the data dir (serve --workers N) convert each adapter only once.
        with file_lock(self.root / f".{key}.lock"):
            if not out.is_file():
                self._convert(folder, out)
        return out


def init_adapter(llama_cpp: Any, model: Any, path: Path, name: str) -> Any:
    """Load a llama.cpp LoRA GGUF onto `model`; the handle, or ModelLoadError."""
    handle = llama_cpp.llama_adapter_lora_init(model, str(path).encode("utf-8"))
    if not handle:
        raise ModelLoadError(
            f"llama.cpp could not load LoRA adapter {name!r} from {path}",
            hint="the adapter may not fit this base model; the server log has llama.cpp's reason",
        )
    return handle


def free_adapter(llama_cpp: Any, handle: Any) -> None:
    """Release an adapter's weights; it must not be set on any context any more."""
    llama_cpp.llama_adapter_lora_free(handle)


def set_adapter(llama_cpp: Any, ctx: Any, handle: Any | None) -> None:
    """Make `handle` the only adapter applied by context `ctx` (None: the base model)."""
    import ctypes

    if handle is None:
        rc = llama_cpp.llama_set_adapters_lora(ctx, None, 0, None)
    else:
        handles = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(handle)
        scales = (ctypes.c_float * 1)(1.0)
        rc = llama_cpp.llama_set_adapters_lora(ctx, handles, 1, scales)
    if rc != 0:
        raise EngineUnavailable(f"llama.cpp refused to switch LoRA adapters (code {rc})")

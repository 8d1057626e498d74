"""Load the llama.cpp engine: find the GGUF base model, check the package, attach adapters."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraflow.engines.llamacpp import LlamaCppEngine
from loraflow.engines.llamacpp_lora import Checksum, GGUFLoraCache
from loraflow.errors import ConfigError, ModelLoadError
from loraflow.models.adapters import discover_adapters
from loraflow.models.bundled import SMOLLM2_CHAT_TEMPLATE, ensure_bundled, smollm2_gguf_path
from loraflow.models.resolve import resolve_base_model

# (PEFT adapter folder, safetensors base model folder, output .gguf) -> the written file.
ExportLora = Callable[[Path, Path, Path], Path]
PACKAGE_HINT = (
    "pip install 'loraflow[llamacpp]' with the portable build flags of scripts/setup.sh, "
    "or set LOCAL_ENGINE=transformers"
)


@dataclass
class GGUFBase:
    """A GGUF base model and, when there is one, the safetensors folder adapters convert with."""

    gguf: Path
    display_name: str
    hf_folder: Callable[[], Path] | None
    chat_template: str | None = None


def gguf_base(name: str, cache_dir: Path) -> GGUFBase:
    """The GGUF file BASE_MODEL_NAME names; ModelLoadError for transformers folders."""
    key = name.strip().lower()
    if key == "bundled:smollm2":
        # The safetensors copy is only needed (and converted, once) for the first adapter.
        return GGUFBase(
            smollm2_gguf_path(),
            key,
            lambda: ensure_bundled(key, cache_dir),
            SMOLLM2_CHAT_TEMPLATE,
        )
    resolved = resolve_base_model(name, cache_dir)
    if resolved.kind != "gguf" or resolved.gguf_file is None:
        raise ModelLoadError(
            f"LOCAL_ENGINE=llamacpp needs a .gguf base model, but BASE_MODEL_NAME={name!r} is a "
            f"transformers folder ({resolved.path})",
            hint=(
                "convert it with llama.cpp's convert_hf_to_gguf.py (python convert_hf_to_gguf.py "
                "FOLDER --outfile model.gguf) and set BASE_MODEL_NAME to the .gguf file, or use "
                "LOCAL_ENGINE=transformers"
            ),
        )
    folder = resolved.path
    has_hf = (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))
    return GGUFBase(
        folder / resolved.gguf_file, resolved.display_name, (lambda: folder) if has_hf else None
    )


def import_llama_cpp() -> Any:
    """The llama_cpp module, or ConfigError naming the package to install."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise ConfigError(
            f"LOCAL_ENGINE=llamacpp needs the llama-cpp-python package, which is not "
            f"installed ({exc})",
            hint=PACKAGE_HINT,
        ) from exc
    except (OSError, RuntimeError) as exc:  # its shared library failed to load
        raise ConfigError(
            f"llama-cpp-python is installed but its library could not be loaded ({exc})",
            hint=PACKAGE_HINT,
        ) from exc
    return llama_cpp


def load_llamacpp_engine(
    base_model_name: str,
    cache_dir: Path,
    adapters_root: Path | None,
    *,
    threads: int = 0,
    export_lora: ExportLora | None = None,
    checksum: Checksum | None = None,
    lora_cache_dir: Path | None = None,
) -> tuple[LlamaCppEngine, list[str]]:
    """Load the GGUF base model and every adapter found; warnings for adapters that failed.

    `threads` 0 uses every core; `export_lora` and `checksum` convert PEFT adapters to GGUF
    files kept in `lora_cache_dir` (default: `cache_dir`/llamacpp-lora).
    """
    llama_cpp = import_llama_cpp()
    base = gguf_base(base_model_name, cache_dir)
    n = threads or os.cpu_count() or 1
    try:
        # n_ctx 0: the context the model was trained with.
        llm = llama_cpp.Llama(
            model_path=str(base.gguf), n_ctx=0, n_threads=n, n_threads_batch=n, verbose=False
        )
    except (ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"llama.cpp could not load {base.gguf}: {exc}") from exc
    cache = None
    if export_lora is not None and checksum is not None and base.hf_folder is not None:
        hf_folder = base.hf_folder

        def convert(folder: Path, out: Path) -> Path:
            return export_lora(folder, hf_folder(), out)

        root = lora_cache_dir or cache_dir / "llamacpp-lora"
        cache = GGUFLoraCache(root, convert, checksum)
    engine = LlamaCppEngine(
        llm, base_model_name=base.display_name, lora_cache=cache, chat_template=base.chat_template
    )
    warnings: list[str] = []
    for name, path in (discover_adapters(adapters_root) if adapters_root else {}).items():
        try:
            engine.load_adapter(name, path)
        except Exception as exc:  # noqa: BLE001 - one adapter (a full disk, a bad file) must not stop the engine
            warnings.append(f"adapter {name!r} was not attached: {exc}")
    return engine, warnings

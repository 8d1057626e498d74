"""The file-system side of LoRA adapters: finding adapter folders and checking them."""

from __future__ import annotations

import json
from pathlib import Path

from loraflow.errors import InvalidInput, NotFound

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PICKLE_WEIGHTS = "adapter_model.bin"


def is_adapter_folder(path: Path) -> bool:
    """True when `path` is a folder holding a PEFT adapter_config.json."""
    return path.is_dir() and (path / ADAPTER_CONFIG).is_file()


def discover_adapters(root: Path) -> dict[str, Path]:
    """Adapters under `root`: root itself if it is one, else each adapter subfolder by name."""
    if is_adapter_folder(root):
        return {root.name: root}
    if not root.is_dir():
        return {}
    # Dot-folders are scratch space (e.g. a training run still writing), never adapters.
    return {
        sub.name: sub
        for sub in sorted(root.iterdir())
        if not sub.name.startswith(".") and is_adapter_folder(sub)
    }


def check_adapter_folder(path: Path) -> dict:
    """Parsed adapter_config.json of a loadable adapter folder; raise if it cannot be used."""
    missing = NotFound(
        f"LoRA adapter not found at {path}: expected {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}"
    )
    if not is_adapter_folder(path):
        raise missing
    if not (path / ADAPTER_WEIGHTS).is_file():
        if (path / PICKLE_WEIGHTS).is_file():
            raise InvalidInput(
                f"LoRA adapter at {path} has only {PICKLE_WEIGHTS}, a pickle file that can run "
                f"code when loaded; loraflow loads only {ADAPTER_WEIGHTS}",
                hint="re-save the adapter with save_pretrained(..., safe_serialization=True)",
            )
        raise missing
    try:
        config = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{path / ADAPTER_CONFIG} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise InvalidInput(
            f"{path / ADAPTER_CONFIG} must hold a JSON object, not {type(config).__name__}"
        )
    return config

"""Load, reload and unload LoRA adapters while serving (vLLM's /v1/load_lora_adapter)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from loraflow.errors import InvalidInput, NotFound
from loraflow.models.adapters import check_adapter_folder
from loraflow.services.chat import base_model_id, local_engine
from loraflow.services.runtime import Runtime

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def adapter_path(rt: Runtime, raw: str) -> Path:
    """The adapter folder `raw` names; only folders inside the data dir or LORA_MODEL_PATH."""
    if not raw or not str(raw).strip():
        raise InvalidInput("lora_path is empty; give an adapter folder")
    s = rt.settings
    given = Path(str(raw)).expanduser()
    # Relative paths are adapter folders under LORA_MODEL_PATH, like the ones found at start.
    path = (given if given.is_absolute() else s.lora_path / given).resolve()
    roots = [s.data_path.resolve(), s.lora_path.resolve()]
    if not any(path.is_relative_to(root) for root in roots):
        allowed = " or ".join(str(r) for r in roots)
        raise InvalidInput(
            f"lora_path {raw!r} is outside the folders adapters may load from ({allowed})",
            hint="copy the adapter under LORA_MODEL_PATH",
        )
    check_adapter_folder(path)
    return path


def check_name(rt: Runtime, name: str) -> str:
    """A usable adapter name: letters, digits, '.', '_' or '-'; not the base model's name."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInput(
            f"lora_name {name!r} must be 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    if name in (base_model_id(rt), "base", rt.embedder.name):
        raise InvalidInput(f"lora_name {name!r} is the name of a model already; pick another")
    return name


def load_lora(rt: Runtime, name: str, path: str, *, replace: bool = False) -> dict[str, Any]:
    """Attach an adapter under `name`; `replace` swaps in a new version of a loaded one."""
    engine = local_engine(rt)
    name = check_name(rt, name)
    folder = adapter_path(rt, path)
    replaced = replace and name in engine.adapters()
    engine.load_adapter(name, folder, replace=replace)
    return {"lora_name": name, "lora_path": str(folder), "replaced": replaced}


def unload_lora(rt: Runtime, name: str) -> dict[str, Any]:
    """Detach adapter `name`; requests still decoding with it end with an error."""
    engine = local_engine(rt)
    if name not in engine.adapters():
        listed = ", ".join(repr(n) for n in engine.adapters()) or "none"
        raise NotFound(f"adapter {name!r} is not loaded; loaded adapters: {listed}")
    engine.unload_adapter(name)
    return {"lora_name": name}

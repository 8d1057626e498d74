"""Load, reload and unload LoRA adapters while serving (vLLM's /v1/load_lora_adapter).

Each change is recorded in the database too, so every server worker makes it on the next
request it takes (services/lora_records).
"""

from __future__ import annotations

import re
from typing import Any

from loraflow.errors import InvalidInput, NotFound
from loraflow.models.adapters import check_adapter_folder
from loraflow.services.catalog.names import base_model_id
from loraflow.services.registry import lora_records
from loraflow.services.registry.adapters import inside_allowed
from loraflow.services.registry.attach import make_room
from loraflow.services.runtime import Runtime, local_engine

# '@' too: a fleet gateway loads registered versions as `<name>@v<N>`.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


def check_name(rt: Runtime, name: str) -> str:
    """A usable adapter name: letters, digits, '.', '_' or '-'; not the base model's name."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInput(
            f"lora_name {name!r} must be 1-64 letters, digits, '.', '_', '@' or '-', "
            "starting with a letter or digit"
        )
    if name in (base_model_id(rt), "base", rt.embedder.name):
        raise InvalidInput(f"lora_name {name!r} is the name of a model already; pick another")
    return name


def load_lora(rt: Runtime, name: str, path: str, *, replace: bool = False) -> dict[str, Any]:
    """Attach an adapter under `name`; `replace` swaps in a new version of a loaded one."""
    engine = local_engine(rt)
    name = check_name(rt, name)
    folder = inside_allowed(rt, path, field="lora_path")
    check_adapter_folder(folder)
    lora_records.sync(rt)  # what other workers loaded counts: a clash there is a clash here
    with rt.serve_lock:
        replaced = replace and name in engine.adapters()
        if name not in engine.adapters():  # a clash or a swap adds no adapter
            make_room(rt, rt.settings.max_loaded_adapters - 1)
        engine.load_adapter(name, folder, replace=replace)
        # Loaded by name on purpose: it stays until unloaded, whatever MAX_LOADED_ADAPTERS says.
        rt.attached.discard(name)
        try:
            lora_records.record(rt, name, folder)
        except Exception:
            # Not recorded, the other workers would never attach it: undo a fresh load
            # here too, so the error the client gets leaves every worker alike.
            if not replaced:
                engine.unload_adapter(name)
            raise
    return {"lora_name": name, "lora_path": str(folder), "replaced": replaced}


def unload_lora(rt: Runtime, name: str) -> dict[str, Any]:
    """Detach adapter `name`; requests still decoding with it end with an error."""
    engine = local_engine(rt)
    lora_records.sync(rt)
    if name not in engine.adapters():
        listed = ", ".join(repr(n) for n in engine.adapters()) or "none"
        raise NotFound(f"adapter {name!r} is not loaded; loaded adapters: {listed}")
    with rt.serve_lock:
        engine.unload_adapter(name)
        rt.attached.discard(name)
        lora_records.record(rt, name, None)
    return {"lora_name": name}

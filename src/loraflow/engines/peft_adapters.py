"""Attach and detach PEFT LoRA adapters on a shared base model, undoing half-done attaches."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loraflow.errors import ModelLoadError


def attach_adapter(
    base: Any, peft_model: Any, internal: str, path: Path, name: str, base_name: str
) -> Any:
    """Load adapter folder `path` as `internal`; return the (possibly new) PeftModel."""
    from peft import PeftConfig, PeftModel

    created = peft_model is None
    try:
        if created:
            config = PeftConfig.from_pretrained(str(path))
            config.inference_mode = True
            # Built by hand (not PeftModel.from_pretrained) so a failed load can be undone.
            peft_model = PeftModel(base, config, adapter_name=internal)
        result = peft_model.load_adapter(
            str(path), adapter_name=internal, is_trainable=False, torch_device=str(base.device)
        )
        _check_keys(result, internal)
    except Exception as exc:  # PEFT and torch raise many kinds; all mean "does not fit"
        _undo(peft_model, internal, created)
        raise _mismatch(name, internal, path, base_name, exc) from exc
    # New LoRA modules start in training mode (dropout on); PEFT refuses adapter_names then.
    peft_model.eval()
    return peft_model


def detach_adapter(peft_model: Any, internal: str) -> Any:
    """Remove adapter `internal`; return the PeftModel, or None once no adapter is left."""
    if set(peft_model.peft_config) == {internal}:
        # unload() strips the LoRA layers and leaves the base model as it was loaded.
        peft_model.unload()
        return None
    if internal in peft_model.active_adapters:
        # Requests pass adapter_names, so which one is "active" never matters; switching first
        # only spares the warning PEFT gives when the active adapter is deleted.
        other = next(n for n in peft_model.peft_config if n != internal)
        peft_model.set_adapter(other, inference_mode=True)
    peft_model.delete_adapter(internal)
    return peft_model


def _check_keys(result: Any, internal: str) -> None:
    missing = [k for k in getattr(result, "missing_keys", []) if internal in k]
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if missing or unexpected:
        sample = (missing or unexpected)[:3]
        what = "misses weights" if missing else "has weights the base model has no place for"
        raise ValueError(f"the adapter {what}, e.g. {', '.join(sample)}")


def _undo(peft_model: Any, internal: str, created: bool) -> None:
    if peft_model is None:
        return
    if created:
        peft_model.unload()
    elif internal in peft_model.peft_config:
        peft_model.delete_adapter(internal)


def _mismatch(
    name: str, internal: str, path: Path, base_name: str, exc: Exception
) -> ModelLoadError:
    # torch puts the useful part ("size mismatch for ...") after a generic first line.
    detail = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    detail = detail.replace(internal, name) or type(exc).__name__
    trained_for = _trained_for(path)
    return ModelLoadError(
        f"LoRA adapter {name!r} at {path} does not fit the base model {base_name!r}"
        f"{f' (it was trained for {trained_for!r})' if trained_for else ''}: {detail[:300]}",
        hint="set BASE_MODEL_NAME to the model the adapter was trained on, or retrain it",
    )


def _trained_for(path: Path) -> str:
    try:
        config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    return str(config.get("base_model_name_or_path") or "")

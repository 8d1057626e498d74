"""An adapter_config.json checked against the tensors it describes: r, lora_alpha, targets.

PEFT trusts the config: a wrong r fails later with a raw state-dict error, and a tensor of a
layer the targets do not name is silently dropped on load. So registration and merges refuse
a config that disagrees with the tensors, naming the tensor and both values.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraflow.errors import InvalidInput
from loraflow.models.adapters import ADAPTER_CONFIG

if TYPE_CHECKING:
    from loraflow.adapters.inspect import LoraLayout

# Written by loraflow's trainer beside the adapter: the rank and alpha it trained with.
TRAINING_ARGS = "training_args.json"
_A_SUFFIX = {"linear": ".lora_A.weight", "embedding": ".lora_embedding_A"}


def pattern_value(pattern: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's rank_pattern / alpha_pattern lookup: an exact key, else a key ending the path."""
    if module in pattern:
        return pattern[module]
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?{key}$", module):
            return value
    return default


def check_config(path: Path, config: dict[str, Any], layout: LoraLayout) -> None:
    """Raise InvalidInput at the first place where the config and the tensors disagree."""
    where = f"adapter at {path}: {ADAPTER_CONFIG}"
    _check_alpha(path, config, where)
    ranks = config.get("rank_pattern") or {}
    r = config.get("r", 8)  # PEFT's default
    for module, (a_shape, b_shape) in sorted(layout.pairs.items()):
        want = pattern_value(ranks, module, r)
        key = f"base_model.model.{module}{_A_SUFFIX[layout.kinds.get(module, 'linear')]}"
        if isinstance(want, bool) or not isinstance(want, int | float):
            raise InvalidInput(f"{where} gives r={want!r} for {module}, which is not a number")
        if int(want) != a_shape[0] or a_shape[0] != b_shape[1]:
            raise InvalidInput(
                f"{where} gives r={want} for {module}, but tensor {key} has rank {a_shape[0]} "
                f"(shape {list(a_shape)}); the config must describe the tensors it comes with"
            )
    _check_targets(config.get("target_modules"), layout, where)


def _check_alpha(path: Path, config: dict[str, Any], where: str) -> None:
    values = {"lora_alpha": config.get("lora_alpha", 8)}
    values.update(
        {f"alpha_pattern[{k!r}]": v for k, v in (config.get("alpha_pattern") or {}).items()}
    )
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidInput(f"{where}: {name}={value!r} is not a number")
        if not math.isfinite(value) or value == 0:
            scaled = "zero" if value == 0 else "infinity"
            raise InvalidInput(
                f"{where}: {name}={value!r} would scale every change to {scaled}; "
                f"use the alpha the adapter was trained with"
            )
    trained = _training_args(path)
    for field, config_key in (("alpha", "lora_alpha"), ("rank", "r")):
        used = trained.get(field)
        given = config.get(config_key)
        if isinstance(used, int | float) and isinstance(given, int | float) and used != given:
            raise InvalidInput(
                f"{where} gives {config_key}={given}, but {TRAINING_ARGS} says the adapter "
                f"was trained with {field}={used}"
            )


def _check_targets(targets: Any, layout: LoraLayout, where: str) -> None:
    modules = sorted(layout.pairs)
    if targets is None or targets == "all-linear":
        return
    if isinstance(targets, str):
        for module in modules:
            if not re.fullmatch(targets, module):
                raise InvalidInput(
                    f"{where} has target_modules={targets!r}, which does not match "
                    f"{module}, but the adapter holds tensors for it"
                )
        return
    names = [str(t) for t in targets]
    for module in modules:
        if module not in names and not any(module.endswith(f".{n}") for n in names):
            raise InvalidInput(
                f"{where} has target_modules={sorted(names)}, but tensor "
                f"base_model.model.{module}{_A_SUFFIX[layout.kinds.get(module, 'linear')]} "
                f"adapts {module.rsplit('.', 1)[-1]!r}, which PEFT would not load"
            )
    adapted = sorted({m.rsplit(".", 1)[-1] for m in modules})
    for name in names:
        if name not in modules and not any(m.endswith(f".{name}") for m in modules):
            raise InvalidInput(
                f"{where} has target_modules={sorted(names)}, but no tensor adapts a layer "
                f"named {name!r} (the tensors adapt {adapted})"
            )


def _training_args(path: Path) -> dict[str, Any]:
    try:
        data = json.loads((path / TRAINING_ARGS).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}

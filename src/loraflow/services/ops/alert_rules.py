"""Alert rules: what is measured, the threshold, the window and how long before it fires.

Defaults come from the ALERT_* settings; the instance (`*`) and each deployment target may
override any field of any rule. Overrides live in the shared `service_state` table, so every
server worker evaluates the same rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Engine

from loraflow import db
from loraflow.config import Settings
from loraflow.errors import InvalidInput

Scope = Literal["variant", "target", "instance"]
INSTANCE = "*"  # overrides for every target and the instance-wide (resource) rules
_PREFIX = "alert_rules:"
FIELDS = ("threshold", "window", "for")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class RuleKind:
    """One kind of rule: what it measures and on which side of the threshold it alerts."""

    name: str
    scope: Scope  # variant: per target and per variant; target: per target; instance
    unit: str
    above: bool  # True: alerts when the value is above the threshold, False: below
    setting: str  # the Settings field holding its default threshold
    help: str


KINDS: dict[str, RuleKind] = {
    k.name: k
    for k in (
        RuleKind("latency_p95", "variant", "ms", True, "alert_latency_ms", "p95 response time"),
        RuleKind("error_rate", "variant", "ratio", True, "alert_error_rate", "failed share"),
        RuleKind(
            "throughput", "target", "req/min", False, "alert_min_throughput", "requests a minute"
        ),
        RuleKind("cpu", "instance", "%", True, "alert_cpu_percent", "CPU of the workers"),
        RuleKind("memory", "instance", "%", True, "alert_memory_percent", "resident memory"),
        RuleKind("gpu_memory", "instance", "%", True, "alert_gpu_memory_percent", "GPU memory"),
        RuleKind("gpu_util", "instance", "%", True, "alert_gpu_util_percent", "GPU utilisation"),
    )
}


def defaults(settings: Settings) -> dict[str, dict[str, float]]:
    """Every rule with the global settings: threshold (0: off), window and for, in seconds."""
    return {
        name: {
            "threshold": float(getattr(settings, k.setting)),
            "window": float(settings.alert_window),
            "for": float(settings.alert_for),
        }
        for name, k in KINDS.items()
    }


def check_overrides(raw: Any) -> dict[str, dict[str, float]]:
    """Validate `{rule: {threshold?, window?, for?}}`; InvalidInput naming what is wrong."""
    if not isinstance(raw, dict):
        raise InvalidInput(f"alert rules must be an object of rules, got {type(raw).__name__}")
    out: dict[str, dict[str, float]] = {}
    for name, fields in raw.items():
        if name not in KINDS:
            raise InvalidInput(f"unknown alert rule {name!r}; rules: {', '.join(KINDS)}")
        if not isinstance(fields, dict):
            raise InvalidInput(f"alert rule {name!r} must be an object of {FIELDS}")
        clean: dict[str, float] = {}
        for key, value in fields.items():
            if key not in FIELDS:
                raise InvalidInput(
                    f"alert rule {name!r} has no field {key!r}; fields: {', '.join(FIELDS)}"
                )
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            if not ok or value != value or value < 0 or value > 10**9:
                raise InvalidInput(f"alert rule {name}.{key}={value!r} must be a number >= 0")
            if key == "window" and value <= 0:
                raise InvalidInput(f"alert rule {name}.window={value!r} must be above 0 seconds")
            if name == "error_rate" and key == "threshold" and value > 1:
                raise InvalidInput(f"error_rate.threshold={value!r} is a share from 0 to 1")
            clean[key] = float(value)
        out[name] = clean
    return out


def overrides(engine: Engine, target: str) -> dict[str, dict[str, float]]:
    return db.get_state(engine, _PREFIX + target, {}) or {}


def all_overrides(engine: Engine) -> dict[str, dict[str, dict[str, float]]]:
    found = db.states_with_prefix(engine, _PREFIX)
    return {key[len(_PREFIX) :]: value for key, value in found.items() if value}


def set_overrides(engine: Engine, target: str, raw: Any, *, replace: bool = False) -> None:
    """Merge (or with `replace`, set) a target's overrides."""
    new = check_overrides(raw)
    merged = {} if replace else overrides(engine, target)
    for name, fields in new.items():
        merged[name] = {**merged.get(name, {}), **fields}
    db.set_state(engine, _PREFIX + target, merged)


def effective(
    settings: Settings,
    every: dict[str, dict[str, dict[str, float]]],
    target: str = INSTANCE,
) -> dict[str, dict[str, float]]:
    """The rules in force for `target`: settings, then `*` overrides, then the target's."""
    rules = defaults(settings)
    layers = [every.get(INSTANCE, {})] + ([every.get(target, {})] if target != INSTANCE else [])
    for layer in layers:
        for name, fields in layer.items():
            if name in rules:
                rules[name] = {**rules[name], **fields}
    return rules


def check_scope(target: str) -> str:
    """`*` or a deployment target's name (it need not be deployed yet)."""
    if target != INSTANCE and not _NAME.match(target or ""):
        raise InvalidInput(
            f"alert rules belong to '*' (every target and the instance) or a deployment "
            f"target name of 1-64 letters, digits, '.', '_' or '-'; got {target!r}"
        )
    return target


def view(settings: Settings, engine: Engine, target: str = INSTANCE) -> dict[str, Any]:
    """The rules in force for `target`, with each rule's unit and scope, and its overrides."""
    check_scope(target)
    every = all_overrides(engine)
    rules = effective(settings, every, target)
    return {
        "target": target,
        "overrides": every.get(target, {}),
        "rules": {
            name: {
                **cfg,
                "enabled": cfg["threshold"] > 0,
                "unit": KINDS[name].unit,
                "scope": KINDS[name].scope,
                "comparison": "above" if KINDS[name].above else "below",
                "measures": KINDS[name].help,
            }
            for name, cfg in rules.items()
        },
    }


def update(
    settings: Settings, engine: Engine, target: str, raw: Any, *, replace: bool = False
) -> dict[str, Any]:
    check_scope(target)
    if target != INSTANCE and isinstance(raw, dict):
        whole = [n for n in raw if n in KINDS and KINDS[n].scope == "instance"]
        if whole:
            raise InvalidInput(
                f"{', '.join(whole)} measure(s) the whole instance, not one target; "
                "set them on '*' (PUT /api/alerts/rules/*)"
            )
    set_overrides(engine, target, raw, replace=replace)
    return view(settings, engine, target)


def reset(
    settings: Settings, engine: Engine, target: str, rule: str | None = None
) -> dict[str, Any]:
    """Drop a target's override of `rule` (None: of every rule): the defaults apply again."""
    check_scope(target)
    kept = {} if rule is None else dict(overrides(engine, target))
    if rule is not None:
        if rule not in KINDS:
            raise InvalidInput(f"unknown alert rule {rule!r}; rules: {', '.join(KINDS)}")
        kept.pop(rule, None)
    db.set_state(engine, _PREFIX + target, kept)
    return view(settings, engine, target)

"""Deployment strategies as data: which adapter answers a deployment target, and when to roll back.

A deployment target is a model name clients call (e.g. `support`). Its state is a list of
variants, each an adapter with a traffic weight; the strategy decides how a new adapter
enters that list:

- replace: the new adapter takes all traffic at once.
- blue_green: the new adapter is warmed and health-checked beside the live one, then takes
  all traffic in one atomic switch; the old one stays loaded as the standby colour.
- canary: the new adapter gets a small share (`percent`) that grows along `schedule` each
  time it has served `step_requests` requests within the live thresholds; 100 promotes it.
- ab: a fixed split between variants (e.g. 70/30) with per-variant metrics.

Live thresholds (error rate, p95 latency relative to the stable variant) roll a canary or
B variant back on their own; the judgement starts once it has served `min_requests`.

Each deployment carries its own settings (`deploy_settings`): those thresholds, the health
check's retries and timeout, the blue-green switch delay and the A/B duration, each
defaulting to the global DEPLOY_* setting. They are stored in the state, so every worker
judges a target by the numbers it was deployed with. An A/B test with a duration is
concluded on the first request after it ends, by its success metrics: the B variant wins
when it served `min_requests` with an error rate no higher than A's and a p95 latency within
`max_latency_ratio` of A's; otherwise A keeps all traffic.
"""

from __future__ import annotations

import math
import random
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from loraflow.errors import InvalidInput

STRATEGIES = ("replace", "blue_green", "canary", "ab")
DEFAULT_SCHEDULE = (5, 25, 50, 100)
# What decides an A/B test when its duration ends (lower is better for both).
AB_SUCCESS_METRICS = ("error_rate", "latency_p95_s")
# Per-deployment settings: name -> (global setting it defaults to, type, lowest, highest).
SETTINGS: dict[str, tuple[str, type, float, float | None]] = {
    "max_error_rate": ("deploy_max_error_rate", float, 0.0, 1.0),
    "max_latency_ratio": ("deploy_max_latency_ratio", float, 1.0, None),
    "min_requests": ("deploy_min_requests", int, 1, None),
    "health_retries": ("deploy_health_retries", int, 1, 20),
    "health_timeout": ("deploy_health_timeout", float, 0.001, None),
    "switch_delay": ("deploy_switch_delay", float, 0.0, 3600.0),
    "ab_duration": ("deploy_ab_duration", float, 0.0, None),
}


def deploy_settings(defaults: Any, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """One deployment's settings: the given values, checked, else the global ones."""
    given = {k: v for k, v in (given or {}).items() if v is not None}
    unknown = sorted(set(given) - set(SETTINGS))
    if unknown:
        raise InvalidInput(
            f"unknown deployment setting(s) {unknown}; allowed: {', '.join(SETTINGS)}"
        )
    out: dict[str, Any] = {}
    for name, (global_name, kind, low, high) in SETTINGS.items():
        raw = given.get(name, getattr(defaults, global_name))
        try:
            value = kind(raw)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"{name}={raw!r} is not a number") from exc
        if isinstance(raw, bool) or value != value or value < low or (high and value > high):
            bound = f"at least {low:g}" + (f" and at most {high:g}" if high else "")
            raise InvalidInput(f"{name}={raw!r} must be {bound}")
        if name == "max_latency_ratio" and value <= 1:
            raise InvalidInput(f"max_latency_ratio={raw!r} must be above 1 (1.2: 20% slower)")
        out[name] = value
    return out


def check_strategy(strategy: str) -> str:
    s = (strategy or "").strip().lower().replace("-", "_")
    aliases = {"bluegreen": "blue_green", "a/b": "ab", "a_b": "ab"}
    s = aliases.get(s, s)
    if s not in STRATEGIES:
        raise InvalidInput(
            f"unknown deployment strategy {strategy!r}; allowed: {', '.join(STRATEGIES)}"
        )
    return s


def _variant(name: str, adapter: str, weight: float) -> dict[str, Any]:
    return {"name": name, "adapter": adapter, "weight": float(weight)}


def stable_of(state: dict[str, Any] | None) -> str | None:
    """The adapter that takes the stable (largest, first) share of a state."""
    if not state or not state.get("variants"):
        return None
    return str(state["variants"][0]["adapter"])


def new_state(
    strategy: str,
    current: dict[str, Any] | None,
    adapter: str,
    *,
    percent: float | None = None,
    schedule: list[float] | None = None,
    step_requests: int = 20,
    split: list[float] | None = None,
    baseline: str | None = None,
) -> dict[str, Any]:
    """The state after deploying `adapter` with `strategy` over the `current` state."""
    strategy = check_strategy(strategy)
    old = baseline or stable_of(current)
    if strategy == "replace":
        return {"strategy": strategy, "variants": [_variant("stable", adapter, 100)]}
    if strategy == "blue_green":
        live = (current or {}).get("color", "blue") if current else "blue"
        color = "green" if live == "blue" else "blue"
        state: dict[str, Any] = {
            "strategy": strategy,
            "color": color,
            "variants": [_variant(color, adapter, 100)],
        }
        if old is not None:
            state["standby"] = {"name": live, "adapter": old}
        return state
    if old is None:
        raise InvalidInput(
            f"a {strategy} deployment splits traffic with the adapter serving now, and this "
            "target has none",
            hint="deploy a first adapter with strategy replace or blue_green",
        )
    if old == adapter:
        raise InvalidInput(f"adapter {adapter!r} already serves this target; deploy another one")
    if strategy == "canary":
        steps = [float(p) for p in (schedule or DEFAULT_SCHEDULE)]
        if percent is not None:
            steps = [float(percent), *[p for p in steps if p > float(percent)]]
        if not steps or any(not 0 < p <= 100 for p in steps) or steps != sorted(steps):
            raise InvalidInput(
                f"canary schedule {steps} must be increasing percentages in (0, 100]"
            )
        if steps[-1] != 100:
            steps.append(100.0)
        if step_requests < 1:
            raise InvalidInput(f"step_requests={step_requests} must be at least 1")
        p = steps[0]
        return {
            "strategy": strategy,
            "variants": [_variant("stable", old, 100 - p), _variant("canary", adapter, p)],
            "schedule": steps,
            "step": 0,
            "step_requests": int(step_requests),
        }
    # ab
    if split is not None and len(split) != 2:
        raise InvalidInput(f"an A/B split has two shares, not {len(split)}: {split}")
    a, b = (float(split[0]), float(split[1])) if split else (70.0, 30.0)
    if a < 0 or b < 0 or a + b <= 0:
        raise InvalidInput(f"A/B split {split} must be two non-negative shares, not both 0")
    total = a + b
    return {
        "strategy": strategy,
        "variants": [_variant("A", old, 100 * a / total), _variant("B", adapter, 100 * b / total)],
        "success_metrics": list(AB_SUCCESS_METRICS),
    }


def pick(state: dict[str, Any], rng: random.Random | None = None) -> dict[str, Any]:
    """The variant one request goes to, drawn by the weights."""
    variants = state["variants"]
    if len(variants) == 1:
        return variants[0]
    r = (rng or random).uniform(0, sum(v["weight"] for v in variants))
    for v in variants:
        r -= v["weight"]
        if r < 0:
            return v
    return variants[-1]


def candidate_of(state: dict[str, Any]) -> dict[str, Any] | None:
    """The variant under trial (canary or B), judged against the first one."""
    if state.get("strategy") in ("canary", "ab") and len(state["variants"]) > 1:
        return state["variants"][-1]
    return None


def advance_canary(state: dict[str, Any]) -> dict[str, Any]:
    """The next step of a canary's schedule; at 100% the canary becomes the only variant."""
    step = int(state.get("step", 0)) + 1
    schedule = state["schedule"]
    canary = state["variants"][-1]
    if step >= len(schedule) or schedule[step] >= 100:
        return {
            "strategy": "replace",
            "variants": [_variant("stable", canary["adapter"], 100)],
            "promoted_from": "canary",
        }
    p = schedule[step]
    stable = state["variants"][0]
    return {
        **state,
        "step": step,
        "variants": [
            _variant("stable", stable["adapter"], 100 - p),
            _variant("canary", canary["adapter"], p),
        ],
    }


def quantile(values: Iterable[float], q: float) -> float:
    """The `q` quantile of non-empty `values` by nearest rank.

    The p95 of 20 values is the 19th, not the slowest one.
    """
    ordered = sorted(values)
    rank = max(1, math.ceil(round(q * len(ordered), 9)))
    return ordered[min(len(ordered), rank) - 1]


@dataclass
class VariantStats:
    """Live counters of one variant in this process."""

    requests: int = 0
    errors: int = 0
    latencies: deque = field(default_factory=lambda: deque(maxlen=2000))

    def add(self, ok: bool, seconds: float) -> None:
        self.requests += 1
        if not ok:
            self.errors += 1
        self.latencies.append(seconds)

    def quantile(self, q: float) -> float | None:
        return quantile(self.latencies, q) if self.latencies else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": round(self.errors / self.requests, 4) if self.requests else 0.0,
            "latency_p50_s": self.quantile(0.5),
            "latency_p95_s": self.quantile(0.95),
        }


class TrafficStats:
    """Per target and variant counters; reset whenever a target's deployment changes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats: dict[tuple[str, int], dict[str, VariantStats]] = {}

    def record(self, target: str, version: int, variant: str, ok: bool, seconds: float) -> None:
        with self._lock:
            per = self._stats.setdefault((target, version), {})
            per.setdefault(variant, VariantStats()).add(ok, seconds)

    def get(self, target: str, version: int) -> dict[str, VariantStats]:
        with self._lock:
            return dict(self._stats.get((target, version), {}))


def judge(
    state: dict[str, Any],
    stats: dict[str, VariantStats],
    *,
    max_error_rate: float,
    max_latency_ratio: float,
    min_requests: int,
) -> str | None:
    """Why the candidate variant must be rolled back now, or None while it is within limits."""
    cand = candidate_of(state)
    if cand is None:
        return None
    s = stats.get(cand["name"])
    if s is None or s.requests < min_requests:
        return None
    rate = s.errors / s.requests
    if rate > max_error_rate:
        return (
            f"{cand['name']} ({cand['adapter']}) error rate {rate:.0%} over {s.requests} "
            f"requests is above the limit {max_error_rate:.0%}"
        )
    base = stats.get(state["variants"][0]["name"])
    p95, base_p95 = s.quantile(0.95), base.quantile(0.95) if base else None
    judged = p95 is not None and base_p95 and base is not None and base.requests >= min_requests
    if judged and p95 > max_latency_ratio * base_p95:
        return (
            f"{cand['name']} ({cand['adapter']}) p95 latency {p95:.3f}s is above "
            f"{max_latency_ratio}x the stable variant's {base_p95:.3f}s"
        )
    return None


def ab_verdict(
    state: dict[str, Any],
    stats: dict[str, VariantStats],
    *,
    max_latency_ratio: float,
    min_requests: int,
) -> dict[str, Any]:
    """The outcome of an A/B test by its success metrics: the winning variant and why."""
    a_name, b_name = state["variants"][0]["name"], state["variants"][-1]["name"]
    a, b = stats.get(a_name), stats.get(b_name)
    numbers = {
        n: (s.to_dict() if s else VariantStats().to_dict()) for n, s in ((a_name, a), (b_name, b))
    }
    if b is None or b.requests < min_requests:
        served = b.requests if b else 0
        why = f"{b_name} served {served} of the {min_requests} requests needed to judge it"
        return {"winner": a_name, "reason": why, "metrics": numbers}
    b_rate = b.errors / b.requests
    a_rate = (a.errors / a.requests) if a and a.requests else 0.0
    if b_rate > a_rate:
        why = f"{b_name} error rate {b_rate:.1%} is above {a_name}'s {a_rate:.1%}"
        return {"winner": a_name, "reason": why, "metrics": numbers}
    a_p95, b_p95 = (a.quantile(0.95) if a else None), b.quantile(0.95)
    if a_p95 and b_p95 is not None and b_p95 > max_latency_ratio * a_p95:
        why = f"{b_name} p95 latency {b_p95:.3f}s is above {max_latency_ratio}x {a_name}'s"
        return {"winner": a_name, "reason": why, "metrics": numbers}
    why = f"{b_name} error rate {b_rate:.1%} <= {a_name}'s {a_rate:.1%}, latency within limits"
    return {"winner": b_name, "reason": why, "metrics": numbers}


def ready_to_advance(state: dict[str, Any], stats: dict[str, VariantStats]) -> bool:
    """A canary that served its step's requests within limits moves to the next step."""
    if state.get("strategy") != "canary":
        return False
    cand = candidate_of(state)
    s = stats.get(cand["name"]) if cand else None
    return bool(s and s.requests >= int(state.get("step_requests", 20)))

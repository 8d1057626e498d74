"""Benchmark one adapter against its base model in one run, on the local engine.

Requests alternate base, adapter, base, ... with the same prompts and greedy decoding to a
fixed length (EOS ignored), so both sides generate the same tokens' worth of work and share
whatever else the machine is doing. The result is stored in the adapter's record
(`performance_metrics.benchmark`), beside its validation.
"""

from __future__ import annotations

import platform
import time
from datetime import UTC, datetime
from typing import Any

from loraflow.adapters.deploy import quantile
from loraflow.engines.base import GenerationParams
from loraflow.engines.hybrid import batch_only
from loraflow.errors import InvalidInput
from loraflow.services.registry import adapters as adapter_svc
from loraflow.services.registry import attach
from loraflow.services.runtime import Runtime, local_engine

PROMPTS = (
    "Write one sentence about the sea.",
    "List three colours.",
    "Explain in one line what a database index is.",
    "Say hello to a new colleague.",
)


def _side(seconds: list[float], tokens: int) -> dict[str, Any]:
    def q(p: float) -> float:
        return round(1000 * quantile(seconds, p), 1)

    total = sum(seconds)
    return {
        "requests": len(seconds),
        "latency_p50_ms": q(0.5),
        "latency_p95_ms": q(0.95),
        "tokens": tokens,
        "tokens_per_s": round(tokens / total, 2) if total else None,
    }


def benchmark(
    rt: Runtime, ref: str, *, requests: int = 8, max_new_tokens: int = 16
) -> dict[str, Any]:
    """Latency p50/p95 and tokens/s of `ref` and of the base model; stored with the adapter."""
    if not 1 <= requests <= 1000:
        raise InvalidInput(f"requests={requests} must be from 1 to 1000")
    if not 1 <= max_new_tokens <= 4096:
        raise InvalidInput(f"max_new_tokens={max_new_tokens} must be from 1 to 4096")
    rec = adapter_svc.get_adapter(rt, ref)
    engine = local_engine(rt)
    served = attach.ensure_served(rt, rec.id)
    params = GenerationParams(max_new_tokens=max_new_tokens, temperature=0.0, ignore_eos=True)
    times: dict[str, list[float]] = {"base": [], "adapter": []}
    tokens = {"base": 0, "adapter": 0}
    # LOCAL_ENGINE=hybrid: both sides on the batch, not the base on llama.cpp and the adapter
    # on the batch until llama.cpp has converted it.
    with batch_only():
        # One warm-up each: the first call pays for caches and lazy initialisation.
        engine.generate_text(PROMPTS[0], params, adapter=None)
        engine.generate_text(PROMPTS[0], params, adapter=served)
        for i in range(requests):
            prompt = PROMPTS[i % len(PROMPTS)]
            order = (("base", None), ("adapter", served))
            for side, adapter in order if i % 2 == 0 else order[::-1]:
                started = time.perf_counter()
                result = engine.generate_text(prompt, params, adapter=adapter)
                times[side].append(time.perf_counter() - started)
                tokens[side] += result.completion_tokens
    base, mine = _side(times["base"], tokens["base"]), _side(times["adapter"], tokens["adapter"])
    out = {
        "adapter": rec.ref,
        "base_model": rt.settings.base_model_name,
        "engine": rt.settings.local_engine,
        "device": rt.settings.device,
        "host": platform.machine(),
        "max_new_tokens": max_new_tokens,
        "base": base,
        "with_adapter": mine,
        "tokens_per_s_ratio": (
            round(mine["tokens_per_s"] / base["tokens_per_s"], 3)
            if mine["tokens_per_s"] and base["tokens_per_s"]
            else None
        ),
        "measured_at": datetime.now(UTC).isoformat(),
    }
    adapter_svc.registry(rt).set_metrics(rec.ref, {"benchmark": out})
    return out

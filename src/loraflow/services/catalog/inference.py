"""Quick local inference without a server: load the LOCAL_ENGINE model (+ adapters), answer once."""

from __future__ import annotations

from loraflow.config import Settings
from loraflow.engines.base import GenerationResult
from loraflow.errors import NotFound
from loraflow.models.adapters import discover_adapters
from loraflow.services.catalog.generation import request_params
from loraflow.services.runtime import load_local


def quick_generate(
    settings: Settings,
    prompt: str,
    *,
    adapter: str | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
) -> tuple[GenerationResult, list[str], str]:
    """Answer one prompt with the base model or an adapter; also returns load warnings and
    which engine answered."""
    params = request_params(settings, max_tokens=max_tokens, temperature=temperature)
    found = discover_adapters(settings.lora_path)
    if adapter is not None and adapter not in found:
        known = ", ".join(repr(n) for n in found) or "there are none"
        raise NotFound(
            f"unknown adapter {adapter!r}; known adapters: {known}",
            hint=f"put PEFT adapter folders under {settings.lora_path}",
        )
    # Only the adapter asked for is attached (llama.cpp converts each one on first use).
    engine, warnings = load_local(
        settings,
        batching=False,
        adapters=found[adapter] if adapter is not None else None,
        attach=adapter is not None,
    )
    if adapter is not None and adapter not in engine.adapters():
        raise NotFound(f"adapter {adapter!r} could not be attached: {'; '.join(warnings)}")
    result = engine.generate([{"role": "user", "content": prompt}], params, adapter=adapter)
    return result, warnings, _answered_by(settings, engine)


def _answered_by(settings: Settings, engine: object) -> str:
    """LOCAL_ENGINE as it served: hybrid names the engine it sent the prompt to, and a
    hybrid that started without llama.cpp says so."""
    from loraflow.engines.hybrid import HybridEngine

    if isinstance(engine, HybridEngine):
        return "hybrid (llama.cpp)" if engine.served["solo"] else "hybrid (transformers)"
    if settings.local_engine == "hybrid":
        return "transformers (hybrid without llama.cpp)"
    return settings.local_engine

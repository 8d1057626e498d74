"""Per-model token and request counters of this process (exported on /metrics)."""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass
class ModelUsage:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class TokenUsage:
    """Requests and tokens per model name (base model, adapter, assistant or Ollama)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_model: dict[str, ModelUsage] = {}

    def record(self, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        with self._lock:
            u = self._by_model.setdefault(model, ModelUsage())
            u.requests += 1
            u.prompt_tokens += max(0, int(prompt_tokens or 0))
            u.completion_tokens += max(0, int(completion_tokens or 0))

    def snapshot(self) -> dict[str, ModelUsage]:
        with self._lock:
            return {k: ModelUsage(**vars(v)) for k, v in self._by_model.items()}

"""What every generation backend offers: parameters, results and the Engine protocol."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from loraflow.errors import InvalidInput

FinishReason = Literal["stop", "length"]


@dataclass
class GenerationParams:
    """Sampling settings of one request; temperature 0 means greedy decoding."""

    max_new_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 50
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    repetition_penalty: float = 1.0
    # Keep going past end-of-sequence until max_new_tokens (fixed-length runs, benchmarks).
    ignore_eos: bool = False

    def validate(self) -> GenerationParams:
        """Raise InvalidInput for values no backend can use; return self for chaining."""
        if self.max_new_tokens < 1:
            raise InvalidInput(f"max_new_tokens={self.max_new_tokens} must be at least 1")
        if self.temperature < 0:
            raise InvalidInput(f"temperature={self.temperature} must be 0 (greedy) or more")
        if not 0 < self.top_p <= 1:
            raise InvalidInput(f"top_p={self.top_p} must be in (0, 1]")
        if self.top_k < 0:
            raise InvalidInput(f"top_k={self.top_k} must be 0 (off) or more")
        if self.repetition_penalty <= 0:
            raise InvalidInput(
                f"repetition_penalty={self.repetition_penalty} must be more than 0 (1.0 = off)"
            )
        for s in self.stop:
            if not isinstance(s, str) or not s.strip():
                raise InvalidInput(
                    f"stop string {s!r} is empty or whitespace-only; give non-blank strings"
                )
        return self

    @property
    def greedy(self) -> bool:
        """True when decoding should pick the most likely token (temperature 0)."""
        return self.temperature == 0


@dataclass
class GenerationResult:
    """The text an engine produced and how many tokens it took."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason


@dataclass
class EngineHealth:
    """Whether an engine can answer now, and why not in plain words."""

    ok: bool
    detail: str


@runtime_checkable
class Engine(Protocol):
    """A chat backend: the local HF model (+ adapters) or Ollama."""

    name: str

    def generate(
        self, messages: list[dict[str, str]], params: GenerationParams, adapter: str | None = None
    ) -> GenerationResult:
        """Answer the chat `messages` in one piece."""
        ...

    def stream(
        self, messages: list[dict[str, str]], params: GenerationParams, adapter: str | None = None
    ) -> Iterator[str]:
        """Answer the chat `messages` as text pieces, as they are produced."""
        ...

    def health(self) -> EngineHealth:
        """Whether the backend can answer now."""
        ...

    def adapters(self) -> list[str]:
        """Names of the LoRA adapters this engine can apply."""
        ...


class LocalEngine(Engine, Protocol):
    """The engine of this process (HFEngine, LlamaCppEngine, HybridEngine): raw prompts, adapters
    by folder.

    The services hold it as `Runtime.local`; the remote engines offer only `Engine`.
    """

    # Told the adapter name when a request with an adapter reaches the engine (None: no one).
    on_request: Callable[[str], None] | None

    @property
    def device(self) -> str:
        """Where the model runs ("cpu", "cuda:0"...)."""
        ...

    @property
    def batching(self) -> bool:
        """Whether concurrent requests decode together in one batch."""
        ...

    def generate_text(
        self, prompt: str, params: GenerationParams, adapter: str | None = None
    ) -> GenerationResult:
        """Continue the raw `prompt` (no chat template) in one piece."""
        ...

    def stream_text(
        self, prompt: str, params: GenerationParams, adapter: str | None = None
    ) -> Iterator[str]:
        """Continue the raw `prompt` as text pieces; bad input raises before the first piece."""
        ...

    def count_tokens(self, text: str) -> int:
        """How many tokens `text` takes for this model."""
        ...

    def logits_finite(self, text: str, adapter: str | None = None) -> bool:
        """Whether one forward pass over `text` (with `adapter`) gives finite logits."""
        ...

    def adapter_paths(self) -> dict[str, Path]:
        """Attached adapters and the folders they were loaded from."""
        ...

    def load_adapter(self, name: str, path: Path, *, replace: bool = False) -> None:
        """Attach the PEFT adapter in folder `path` under `name`; `replace` swaps it in place."""
        ...

    def unload_adapter(self, name: str) -> None:
        """Detach adapter `name`; the base model and other adapters stay loaded."""
        ...

    def adapters_in_use(self) -> set[str]:
        """Attached adapters that a queued or running request uses (not to be detached)."""
        ...

    def queue_depth(self) -> tuple[int, int]:
        """(requests running now, requests waiting for their turn)."""
        ...

    def close(self) -> None:
        """Release the model (and any scheduler thread)."""
        ...

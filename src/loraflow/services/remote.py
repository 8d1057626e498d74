"""The remote engine chosen by REMOTE_BACKEND: Ollama, or vLLM / any OpenAI-compatible server."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import TYPE_CHECKING

from loraflow.config import Settings
from loraflow.engines.base import FinishReason
from loraflow.engines.ollama import OllamaEngine, same_model
from loraflow.engines.openai_http import OpenAIHTTPEngine
from loraflow.errors import NotFound

if TYPE_CHECKING:
    from loraflow.services.runtime import Runtime

RemoteEngine = OllamaEngine | OpenAIHTTPEngine

# Every name an API accepts for "the remote engine"; the seed called it "ollama".
REMOTE_NAMES = ("remote", "ollama", "openai")
# API model names `remote/<name>` answer with the remote server's model <name>: any model Ollama
# lists (an adapter deployed there is one), or vLLM's base model and LoRA modules.
MODEL_PREFIX = "remote/"


def make_remote_engine(settings: Settings, timeout: float | None = None) -> RemoteEngine:
    """The engine REMOTE_BACKEND names, configured from its own settings."""
    if settings.remote_backend == "openai":
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else ""
        return OpenAIHTTPEngine(
            settings.openai_base_url,
            settings.openai_model,
            api_key=key or None,
            timeout=timeout or settings.openai_timeout,
        )
    return OllamaEngine(
        settings.ollama_base_url, settings.ollama_model, timeout or settings.ollama_timeout
    )


def is_remote(engine: str | None) -> bool:
    """True for any name of the remote engine (remote, ollama, openai)."""
    return engine in REMOTE_NAMES


def describe(settings: Settings) -> dict[str, str]:
    """Backend, URL and model of the remote engine, for info and status output."""
    if settings.remote_backend == "openai":
        return {
            "remote_backend": "openai",
            "remote_base_url": settings.openai_base_url,
            "remote_model": settings.openai_model,
        }
    return {
        "remote_backend": "ollama",
        "remote_base_url": settings.ollama_base_url,
        "remote_model": settings.ollama_model,
    }


def label(settings: Settings) -> str:
    """How messages name the remote model, e.g. "Ollama model qwen2.5:1.5b at http://..."."""
    d = describe(settings)
    kind = "Ollama" if d["remote_backend"] == "ollama" else "OpenAI-compatible"
    return f"{kind} model {d['remote_model']} at {d['remote_base_url']}"


def _is_default(rt: Runtime, name: str) -> bool:
    if isinstance(rt.remote, OllamaEngine):
        return same_model(name, rt.remote.model)
    return name == rt.remote.model


def remote_adapter(rt: Runtime, name: str | None) -> str | None:
    """The remote engine's `adapter` argument for a model name: None for its default model."""
    if name is None or _is_default(rt, name):
        return None
    return name


def require_remote_adapter(rt: Runtime, name: str | None) -> str | None:
    """Like remote_adapter, but checked against the models the remote server lists now."""
    adapter = remote_adapter(rt, name)
    if adapter is None:
        return None
    served = rt.remote.adapters()
    if isinstance(rt.remote, OllamaEngine):
        found = any(same_model(n, adapter) for n in served)
        hint = (
            f"`ollama pull {adapter}`, or deploy an adapter there "
            "(`loraflow adapters export NAME --format ollama`, or a Modelfile with FROM + ADAPTER)"
        )
    else:
        found = adapter in served
        hint = "start vLLM with --enable-lora --lora-modules NAME=PATH, or load it there"
    if not found:
        listed = ", ".join(repr(n) for n in served) if served else "none"
        raise NotFound(
            f"{rt.remote.base_url} serves no model {adapter!r} besides {rt.remote.model!r}; "
            f"its others: {listed}",
            hint=hint,
        )
    return adapter


def remote_model_ids(rt: Runtime) -> list[str]:
    """`remote/<name>` for the remote engine's model and every other model its server lists."""
    return [MODEL_PREFIX + n for n in [rt.remote.model, *rt.remote.adapters()]]


class CountedPieces:
    """A remote text stream that counts its pieces (vLLM and Ollama send one token per piece)."""

    prompt_tokens = 0

    def __init__(self, pieces: Iterator[str], max_tokens: int) -> None:
        self._pieces = iter(pieces)
        self._head: list[str] = []
        self._max = max_tokens
        self.completion_tokens = 0
        self.finish_reason: FinishReason | None = None

    def prime(self) -> CountedPieces:
        """Wait for the first piece, so an unreachable server fails before a stream starts."""
        self._head.extend(itertools.islice(self._pieces, 1))
        return self

    def __iter__(self) -> Iterator[str]:
        for piece in itertools.chain(self._head, self._pieces):
            self.completion_tokens += 1
            yield piece
        self.finish_reason = "length" if self.completion_tokens >= self._max else "stop"

    def close(self) -> None:
        """Stop reading (the client went away); closes the HTTP stream."""
        close = getattr(self._pieces, "close", None)
        if close is not None:
            close()

"""The remote engine as requests see it: its model names, its adapters, its counted streams."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from loraflow.engines.base import FinishReason
from loraflow.engines.ollama import OllamaEngine, same_model
from loraflow.engines.remote import MODEL_PREFIX
from loraflow.errors import NotFound
from loraflow.services.runtime import Runtime


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

"""One request's generation settings (its own, the instance's defaults for the rest) and the
stream of its answer's pieces, counted."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, cast

from loraflow.config import Settings
from loraflow.engines.base import FinishReason, GenerationParams


def request_params(
    settings: Settings,
    *,
    max_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    stop: Sequence[str] = (),
    seed: int | None = None,
    repetition_penalty: float | None = None,
    ignore_eos: bool = False,
) -> GenerationParams:
    """Validated parameters; None means MAX_NEW_TOKENS / TEMPERATURE / TOP_P / TOP_K /
    REPETITION_PENALTY."""
    return GenerationParams(
        max_new_tokens=settings.max_new_tokens if max_tokens is None else max_tokens,
        temperature=settings.temperature if temperature is None else temperature,
        top_p=settings.top_p if top_p is None else top_p,
        top_k=settings.top_k if top_k is None else top_k,
        stop=list(stop),
        seed=seed,
        repetition_penalty=(
            settings.repetition_penalty if repetition_penalty is None else repetition_penalty
        ),
        ignore_eos=ignore_eos,
    ).validate()


class AnswerStream:
    """Text pieces of one answer; finish reason and token counts are known once it ends."""

    def __init__(
        self, pieces: Iterable[str], engine: Any, max_tokens: int, prompt_tokens: int
    ) -> None:
        self._pieces = pieces
        self._engine = engine
        self._max = max_tokens
        self._text: list[str] = []
        self.prompt_tokens = getattr(pieces, "prompt_tokens", prompt_tokens)
        self.completion_tokens = 0
        self.finish_reason: FinishReason = "stop"

    def __iter__(self) -> Iterator[str]:
        for piece in self._pieces:
            self._text.append(piece)
            yield piece
        exact = getattr(self._pieces, "finish_reason", None)
        if exact is not None:
            self.finish_reason = exact
            # A stream that knows its finish reason counted its tokens too.
            self.completion_tokens = cast(Any, self._pieces).completion_tokens
        else:
            # The unbatched engine streams text only; its token count is re-measured.
            self.completion_tokens = self._engine.count_tokens("".join(self._text))
            self.finish_reason = "length" if self.completion_tokens >= self._max else "stop"

    def close(self) -> None:
        """Stop generating (the client went away)."""
        close = getattr(self._pieces, "close", None)
        if close is not None:
            close()

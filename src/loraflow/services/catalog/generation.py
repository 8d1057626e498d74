"""One request's generation settings: what it gives, the instance's defaults for the rest."""

from __future__ import annotations

from collections.abc import Sequence

from loraflow.config import Settings
from loraflow.engines.base import GenerationParams


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

"""Per-row token choice in the batch: greedy, top-k / top-p limits, seeds, repetition penalty."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from loraflow.engines.base import GenerationParams
from loraflow.engines.sampling import next_tokens


@dataclass
class Row:
    params: GenerationParams
    generator: Any = None
    prompt: list[int] = field(default_factory=list)
    generated: list[int] = field(default_factory=list)


LOGITS = torch.tensor([[0.0, 3.0, 2.9, -1.0, 1.0]])


def test_greedy_and_narrow_sampling_pick_the_top_token() -> None:
    greedy = Row(GenerationParams(temperature=0))
    top1 = Row(GenerationParams(temperature=1.5, top_k=1), torch.Generator().manual_seed(0))
    tiny_p = Row(GenerationParams(temperature=1.5, top_p=0.01), torch.Generator().manual_seed(0))
    rows = [greedy, top1, tiny_p]
    assert next_tokens(LOGITS.repeat(3, 1), rows) == [1, 1, 1]


def test_sampling_is_repeatable_per_seed_and_stays_in_top_k() -> None:
    def draws(seed: int) -> list[int]:
        row = Row(GenerationParams(temperature=2.0, top_k=3), torch.Generator().manual_seed(seed))
        return [next_tokens(LOGITS, [row])[0] for _ in range(40)]

    assert draws(1) == draws(1)
    assert set(draws(1)) <= {1, 2, 4} and len(set(draws(1))) > 1


def test_repetition_penalty_moves_greedy_off_a_seen_token() -> None:
    row = Row(GenerationParams(temperature=0, repetition_penalty=1.5), generated=[1])
    assert next_tokens(LOGITS, [row]) == [2]

"""Pick each row's next token from its logits with that row's own sampling settings."""

from __future__ import annotations

from typing import Any


def next_tokens(logits: Any, rows: list[Any]) -> list[int]:
    """One token id per row of `logits` (B, V); rows carry `params`, `generator` and tokens."""
    import torch

    greedy = logits.argmax(dim=-1).tolist()
    out: list[int] = []
    for i, row in enumerate(rows):
        p = row.params
        if p.repetition_penalty == 1.0 and p.greedy:
            out.append(greedy[i])
            continue
        scores = logits[i].float().clone()
        if p.repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(row.prompt) | set(row.generated)), dtype=torch.long)
            picked = scores[seen]
            # The same rule as transformers: shrink positive scores, grow negative ones.
            scores[seen] = torch.where(
                picked < 0, picked * p.repetition_penalty, picked / p.repetition_penalty
            )
        if p.greedy:
            out.append(int(scores.argmax()))
            continue
        out.append(_sample(scores / p.temperature, p.top_k, p.top_p, row.generator))
    return out


def _sample(scores: Any, top_k: int, top_p: float, generator: Any) -> int:
    import torch

    if 0 < top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        # Keep the smallest prefix whose mass reaches top_p (always at least one token).
        drop = cumulative - sorted_scores.softmax(dim=-1) >= top_p
        scores = scores.scatter(0, order[drop], float("-inf"))
    probs = scores.softmax(dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))

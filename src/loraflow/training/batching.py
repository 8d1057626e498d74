"""Padding-free batches and a Trainer that computes logits only where there are labels.

Why not TRL's SFTTrainer: it is not installed here and its SFTConfig turns on bf16 and
gradient checkpointing by default, which made CPU training 13x slower (DESIGN.md); its
padding-free mode still projects every position onto the vocabulary. This module does
both levers in ~60 lines on the stock transformers Trainer.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer

from loraflow.datasets.encode import IGNORE


class PaddingFreeCollator:
    """Concatenate a batch into one row; position ids restart per sequence.

    transformers turns restarting position ids into a block-diagonal causal mask
    (masking_utils.find_packed_sequence_indices), so no token attends across a boundary,
    and targets are shifted per sequence so none predicts the next sequence's first token.
    """

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        ids: list[int] = []
        pos: list[int] = []
        targets: list[int] = []
        for f in features:
            n = len(f["input_ids"])
            ids += f["input_ids"]
            pos += range(n)
            targets += list(f["labels"][1:]) + [IGNORE]
        return {
            "input_ids": torch.tensor([ids]),
            "position_ids": torch.tensor([pos]),
            "target_ids": torch.tensor([targets]),
        }


def label_only_loss(model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token loss, projecting onto the vocabulary only at target positions."""
    targets = inputs["target_ids"][0]
    keep = (targets != IGNORE).nonzero().squeeze(-1)
    # The LM head over a ~49k vocabulary is a large share of a small model's compute;
    # prompt tokens need no logits at all.
    out = model(
        input_ids=inputs["input_ids"],
        position_ids=inputs["position_ids"],
        logits_to_keep=keep,
        # Required: with a KV cache transformers skips packed-sequence detection entirely.
        use_cache=False,
    )
    logits = out.logits.reshape(-1, out.logits.shape[-1])
    return F.cross_entropy(logits.float(), targets[keep])


class LabelOnlyTrainer(Trainer):
    """Trainer over PaddingFreeCollator batches with `label_only_loss`."""

    # The loss is a per-micro-batch mean; let Trainer divide it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        loss = label_only_loss(model, inputs)
        return (loss, None) if return_outputs else loss

    def prediction_step(
        self,
        model: Any,
        inputs: dict[str, torch.Tensor],
        prediction_loss_only: bool,
        ignore_keys: Any = None,
    ) -> tuple[torch.Tensor, None, None]:
        # Only the eval loss is wanted; the stock step would gather full-vocabulary logits.
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = label_only_loss(model, inputs)
        return loss.detach(), None, None

"""Padding-free batches and a Trainer that computes logits only where there are labels.

Positions whose results feed no loss are not computed, and the beginning that the
sequences of a batch share (a chat template's system prompt, an instruction preamble) is
computed once per step, not once per sequence (`compact`).

Why not TRL's SFTTrainer: it is not installed here and its SFTConfig turns on bf16 and
gradient checkpointing by default, which made CPU training 13x slower (DESIGN.md); its
padding-free mode still projects every position onto the vocabulary. This module does
those levers on the stock transformers Trainer, plus attention per packed sequence (see
`segment_attention`) and, on CPU, cheaper dropout masks and heap reuse (cpu_speed.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, Trainer
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

from loraflow.datasets.encode import IGNORE
from loraflow.training.cpu_speed import retain_freed_memory, use_mask_dropout


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
        starts = [0]
        for f in features:
            starts.append(starts[-1] + len(f["input_ids"]))
        return {
            "input_ids": torch.tensor([ids]),
            "position_ids": torch.tensor([pos]),
            "target_ids": torch.tensor([targets]),
            "segments": torch.tensor(starts),
        }


SEGMENT_ATTENTION = "loraflow_segments"


def segment_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal attention run separately on each packed sequence of a one-row batch.

    With packed rows transformers builds a block-diagonal L x L mask, and a masked SDPA call
    falls back to the math kernel over the whole row: O(L^2) scores, most of them masked.
    One causal SDPA call per sequence needs no mask (the fused kernel) and computes only the
    sum of l_i^2 / 2 scores. With `loraflow_prefix` the first segment is a prefix shared by
    all the others (see `compact`). Without segment bounds it is plain SDPA.
    """
    bounds = kwargs.pop("loraflow_segments", None)
    prefix = kwargs.pop("loraflow_prefix", 0)
    groups = kwargs.pop("loraflow_groups", None)
    if groups is not None and query.shape[0] == 1:
        return _grouped_attention(module, query, key, value, groups, dropout, scaling, kwargs)
    if bounds is None or query.shape[0] != 1:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if kwargs.get("sliding_window") is not None or kwargs.get("s_aux") is not None:
        # `_plain_causal` keeps such models off this path; never attend wrongly in silence.
        raise RuntimeError("per-sequence attention cannot apply a sliding window or sinks")
    p = dropout if module.training else 0.0
    lengths = [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    groups = getattr(module, "num_key_value_groups", 1)
    # On CPU grouped-query heads are shared inside SDPA instead of copied out by repeat_kv.
    # On CUDA only the flash kernel takes enable_gqa (half precision, recent GPUs); anything
    # else would fall back to the O(L^2)-memory math kernel, so the heads are copied there.
    gqa = groups > 1 and query.device.type == "cpu"
    if groups > 1 and not gqa:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    # split, not slicing: its backward writes every piece's gradient into one tensor, where
    # each slice's backward would zero-fill a whole-row gradient of its own.
    qs, ks, vs = (t.split(lengths, dim=2) for t in (query, key, value))
    if prefix:
        # The first piece is a prefix every later piece continues (see compact): each
        # continuation attends to it as to its own beginning. The prefix's own rows are
        # kept from the first call only; the others recompute them (prefix^2 / 2 scores).
        qs, ks, vs = ([torch.cat((t[0], x), dim=2) for x in t[1:]] for t in (qs, ks, vs))
    parts = [
        F.scaled_dot_product_attention(
            q, k, v, dropout_p=p, is_causal=True, scale=scaling, enable_gqa=gqa
        )
        for q, k, v in zip(qs, ks, vs, strict=True)
    ]
    if prefix:
        parts[1:] = [x[:, :, prefix:] for x in parts[1:]]
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None


def _grouped_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    groups: list[list[int]],
    dropout: float,
    scaling: float | None,
    kwargs: dict[str, Any],
) -> tuple[torch.Tensor, None]:
    """`segment_attention` for a row of groups, each a prefix and the pieces continuing it.

    `groups` holds each group's lengths in row order: its prefix (may be 0), then its pieces
    (a preference pair: the prompt, then the chosen and the rejected answer). Every piece
    attends causally to its group's prefix and to itself only, so the prefix is computed once
    for all its continuations.
    """
    if kwargs.get("sliding_window") is not None or kwargs.get("s_aux") is not None:
        raise RuntimeError("per-sequence attention cannot apply a sliding window or sinks")
    p = dropout if module.training else 0.0
    n_groups = getattr(module, "num_key_value_groups", 1)
    gqa = n_groups > 1 and query.device.type == "cpu"
    if n_groups > 1 and not gqa:
        key, value = repeat_kv(key, n_groups), repeat_kv(value, n_groups)
    lengths = [n for g in groups for n in g]
    qs, ks, vs = (t.split(lengths, dim=2) for t in (query, key, value))
    parts = []
    at = 0
    for group in groups:
        pre = group[0]
        for j in range(1, len(group)):
            i = at + j
            q, k, v = qs[i], ks[i], vs[i]
            if pre:
                q, k, v = (torch.cat((t[at], x), dim=2) for t, x in ((qs, q), (ks, k), (vs, v)))
            out = F.scaled_dot_product_attention(
                q, k, v, dropout_p=p, is_causal=True, scale=scaling, enable_gqa=gqa
            )
            # The prefix's own rows are kept from the group's first piece only.
            parts.append(out[:, :, pre:] if pre and j > 1 else out)
        at += len(group)
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None


AttentionInterface.register(SEGMENT_ATTENTION, segment_attention)


@contextmanager
def _attention(model: Any, name: str | None) -> Iterator[None]:
    """Use attention implementation `name` for the forward passes inside the block."""
    config = getattr(model, "config", None)
    old = getattr(config, "_attn_implementation", None)
    if name is None or config is None or old not in ("sdpa", name):
        yield
        return
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = old


def shared_prefix(ids: list[list[int]], targets: list[list[int]]) -> int:
    """How many leading tokens all sequences have in common with no target among them.

    Such a prefix has the same activations in every sequence (attention is causal), so it
    can be computed once. At least one token of each sequence is left to follow it.
    """
    if len(ids) < 2:
        return 0
    limit = min(len(x) for x in ids) - 1
    first = ids[0]
    n = 0
    while n < limit and all(x[n] == first[n] for x in ids) and all(t[n] == IGNORE for t in targets):
        n += 1
    return n


def compact(inputs: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """A packed batch without the positions whose results nothing uses, nor recomputes.

    - Each sequence's trailing positions without a target are dropped: attention is causal
      and nothing follows them, so they feed no loss (a chat row's last newline, say).
    - The sequences' common prefix (`shared_prefix`) is kept once, before all of them.

    Returns the new batch and the prefix length. Segments are then the prefix (when it is
    not 0) and each sequence's rest. The loss and its gradients are those of the separate
    sequences; with LoRA dropout the sequences share the prefix's one dropout draw as they
    share its activations.
    """
    bounds = inputs["segments"].tolist()
    ids, targets = inputs["input_ids"][0].tolist(), inputs["target_ids"][0].tolist()
    spans = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        while b - a > 1 and targets[b - 1] == IGNORE:
            b -= 1
        spans.append((a, b))
    n = shared_prefix([ids[a:b] for a, b in spans], [targets[a:b] for a, b in spans])
    if n == 0 and all(b == e for (_, b), e in zip(spans, bounds[1:], strict=True)):
        return inputs, 0
    index = list(range(spans[0][0], spans[0][0] + n))
    new_bounds = [0, n] if n else [0]
    for a, b in spans:
        index += range(a + n, b)
        new_bounds.append(new_bounds[-1] + b - a - n)
    at = torch.tensor(index, device=inputs["input_ids"].device)
    out = {k: inputs[k][:, at] for k in ("input_ids", "position_ids", "target_ids")}
    out["segments"] = torch.tensor(new_bounds)
    return out, n


def label_only_loss(model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token loss, projecting onto the vocabulary only at target positions."""
    extra: dict[str, Any] = {}
    segments = inputs.get("segments")
    # Gradient checkpointing re-runs the forward during backward, outside this block, where
    # the mask-free attention would not apply: packed rows keep transformers' own mask then.
    if segments is not None and not _checkpointing(model) and _plain_causal(model):
        inputs, prefix = compact(inputs)
        extra["loraflow_segments"] = inputs["segments"].tolist()
        if prefix:
            extra["loraflow_prefix"] = prefix
    targets = inputs["target_ids"][0]
    keep = (targets != IGNORE).nonzero().squeeze(-1)
    # The LM head over a ~49k vocabulary is a large share of a small model's compute;
    # prompt tokens need no logits at all.
    with _attention(model, SEGMENT_ATTENTION if extra else None):
        out = model(
            input_ids=inputs["input_ids"],
            position_ids=inputs["position_ids"],
            logits_to_keep=keep,
            # Required: with a KV cache transformers skips packed-sequence detection entirely.
            use_cache=False,
            **extra,
        )
    logits = out.logits.reshape(-1, out.logits.shape[-1])
    return F.cross_entropy(logits.float(), targets[keep])


class LabelOnlyTrainer(Trainer):
    """Trainer over PaddingFreeCollator batches with `label_only_loss`."""

    # The loss is a per-micro-batch mean; let Trainer divide it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Cheaper dropout masks on CPU (cpu_speed.MaskDropout); CUDA tensors are unaffected.
        use_mask_dropout(self.model)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        if self.args.device.type != "cpu":
            return super().train(*args, **kwargs)
        with retain_freed_memory():
            return super().train(*args, **kwargs)

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


def _checkpointing(model: Any) -> bool:
    # transformers 5 renamed is_gradient_checkpointing (now deprecated) to this.
    flag = getattr(model, "is_activation_checkpointing", None)
    if flag is None:
        flag = getattr(model, "is_gradient_checkpointing", False)
    return bool(flag)


def _plain_causal(model: Any) -> bool:
    """Whether every layer attends fully causally (no sliding window, no attention sinks)."""
    config = getattr(model, "config", None)
    if config is None:
        return False
    window = getattr(config, "sliding_window", None)
    if window is not None and getattr(config, "use_sliding_window", True):
        return False
    layer_types = getattr(config, "layer_types", None) or []
    return all(t == "full_attention" for t in layer_types) and not hasattr(config, "sink_size")

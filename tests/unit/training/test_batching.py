"""Padding-free batches and label-only loss equal the padded per-sequence computation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from loraflow.datasets.encode import IGNORE, encode_examples
from loraflow.training.batching import (
    PaddingFreeCollator,
    compact,
    label_only_loss,
    shared_prefix,
)

EXAMPLES = [
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
    {"text": "A short raw text about lighthouses and storms."},
    {
        "messages": [
            {"role": "user", "content": "Count"},
            {"role": "assistant", "content": "1 2 3"},
            {"role": "user", "content": "More"},
            {"role": "assistant", "content": "4 5"},
        ]
    },
]


def _features(tiny_llama_dir: Path) -> list[dict]:
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    encoded = encode_examples(EXAMPLES, tok, 512)
    return [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded]


def test_packed_loss_equals_separate_sequences(tiny_llama_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    feats = _features(tiny_llama_dir)
    with torch.no_grad():
        packed = label_only_loss(model, PaddingFreeCollator()(feats))
        total, count = 0.0, 0
        for f in feats:
            out = model(input_ids=torch.tensor([f["input_ids"]]))
            logits, labels = out.logits[0, :-1], torch.tensor(f["labels"][1:])
            keep = labels != IGNORE
            total += torch.nn.functional.cross_entropy(
                logits[keep], labels[keep], reduction="sum"
            ).item()
            count += int(keep.sum())
    assert abs(packed.item() - total / count) < 1e-4


def test_no_attention_across_sequence_boundaries(tiny_llama_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    feats = _features(tiny_llama_dir)
    changed = [dict(feats[0], input_ids=[7] * len(feats[0]["input_ids"])), *feats[1:]]
    collate = PaddingFreeCollator()

    def logits(batch: list[dict]) -> torch.Tensor:
        inputs = {k: v for k, v in collate(batch).items() if k not in ("target_ids", "segments")}
        # With a KV cache transformers ignores the packing (it builds a plain causal mask).
        return model(**inputs, use_cache=False).logits

    with torch.no_grad():
        a, b = logits(feats), logits(changed)
    n0 = len(feats[0]["input_ids"])
    # Rewriting the first sequence leaves every later sequence's logits unchanged.
    assert torch.allclose(a[0, n0:], b[0, n0:], atol=1e-5)
    assert not torch.allclose(a[0, :n0], b[0, :n0])


def _lora_model(tiny_llama_dir: Path, kv_heads: int):
    """The tiny Llama with `kv_heads` key/value heads and non-zero LoRA on q and v."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_llama_dir)
    config.num_key_value_heads = kv_heads
    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    assert base.config._attn_implementation == "sdpa"
    torch.manual_seed(0)
    return get_peft_model(
        base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )


def _loss_and_grads(model, inputs: dict) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad()
    loss = label_only_loss(model, inputs)
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("kv_heads", [4, 2], ids=["multi-head", "grouped-query"])
def test_per_sequence_attention_gives_the_masked_loss_and_gradients(
    tiny_llama_dir: Path, kv_heads: int
) -> None:
    model = _lora_model(tiny_llama_dir, kv_heads)
    batch = PaddingFreeCollator()(_features(tiny_llama_dir))
    assert batch["segments"].tolist()[0] == 0
    assert batch["segments"].tolist()[-1] == batch["input_ids"].shape[1]
    # Without segment bounds the packed row goes through transformers' block-diagonal mask.
    masked = _loss_and_grads(model, {k: v for k, v in batch.items() if k != "segments"})
    per_sequence = _loss_and_grads(model, batch)
    assert abs(masked[0] - per_sequence[0]) < 1e-5
    for a, b in zip(masked[1], per_sequence[1], strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    # The attention implementation is switched only for that forward pass.
    assert model.config._attn_implementation == "sdpa"


def test_sliding_window_models_keep_their_window_when_packed(tiny_llama_dir: Path) -> None:
    from transformers import MistralConfig, MistralForCausalLM

    feats = _features(tiny_llama_dir)
    vocab = max(max(f["input_ids"]) for f in feats) + 1
    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=3,
    )
    model = MistralForCausalLM(config).eval()
    with torch.no_grad():
        packed = label_only_loss(model, PaddingFreeCollator()(feats))
        total, count = 0.0, 0
        for f in feats:
            logits = model(input_ids=torch.tensor([f["input_ids"]])).logits[0, :-1]
            labels = torch.tensor(f["labels"][1:])
            keep = labels != IGNORE
            total += torch.nn.functional.cross_entropy(
                logits[keep], labels[keep], reduction="sum"
            ).item()
            count += int(keep.sum())
    # A window of 3 tokens: full causal attention would give a different loss.
    assert abs(packed.item() - total / count) < 1e-4


def test_shared_prefix_stops_at_a_difference_a_target_or_the_last_token() -> None:
    x = IGNORE
    assert shared_prefix([[1, 2, 3, 4], [1, 2, 5, 6]], [[x] * 4, [x] * 4]) == 2
    # Position 1 predicts a trained token in the second sequence: only position 0 is shared.
    assert shared_prefix([[1, 2, 3, 4], [1, 2, 3, 6]], [[x] * 4, [x, 9, x, x]]) == 1
    # Identical sequences still leave each at least one token of its own.
    assert shared_prefix([[1, 2, 3], [1, 2, 3]], [[x] * 3, [x] * 3]) == 2
    assert shared_prefix([[1, 2, 3]], [[x] * 3]) == 0
    assert shared_prefix([[1, 2], [7, 2]], [[x] * 2, [x] * 2]) == 0


@pytest.mark.parametrize("kv_heads", [4, 2], ids=["multi-head", "grouped-query"])
def test_a_compacted_batch_gives_the_same_loss_and_gradients(
    tiny_llama_dir: Path, kv_heads: int
) -> None:
    model = _lora_model(tiny_llama_dir, kv_heads)
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    chats = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in [("Hi", "Hello!"), ("Name a river", "The Nile."), ("2+2?", "4")]
    ]
    feats = [
        {"input_ids": e.input_ids, "labels": e.labels} for e in encode_examples(chats, tok, 512)
    ]
    batch = PaddingFreeCollator()(feats)
    shared, n = compact(batch)
    # The chat template's system prompt and the user turn's opening are common to all three;
    # each row's last position (a newline after the answer) has no target and is left out.
    assert n > 5
    assert shared["input_ids"].shape[1] == batch["input_ids"].shape[1] - 2 * n - 3

    # Without segment bounds every sequence goes whole through transformers' masked path.
    masked = _loss_and_grads(model, {k: v for k, v in batch.items() if k != "segments"})
    once = _loss_and_grads(model, batch)
    assert abs(masked[0] - once[0]) < 1e-5
    for a, b in zip(masked[1], once[1], strict=True):
        assert torch.allclose(a, b, atol=1e-5)

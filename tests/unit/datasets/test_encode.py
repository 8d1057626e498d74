"""Encoding: loss only on assistant turns through the chat template; raw text is windowed."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from loraflow.datasets.encode import IGNORE, encode_examples


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir: Path):
    return AutoTokenizer.from_pretrained(smollm2_dir)


def _trained_text(tokenizer, enc) -> str:
    return tokenizer.decode(
        [t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE]
    )


def test_only_assistant_turns_carry_loss(tokenizer) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is two plus two?"},
        {"role": "assistant", "content": "Four."},
        {"role": "user", "content": "And three plus three?"},
        {"role": "assistant", "content": "Six."},
    ]
    [enc] = encode_examples([{"messages": messages}], tokenizer, 512)
    full = tokenizer.decode(enc.input_ids)
    assert "<|im_start|>user" in full and "What is two plus two?" in full
    trained = _trained_text(tokenizer, enc)
    assert "Four." in trained and "Six." in trained
    assert "two plus two" not in trained and "Be brief" not in trained
    assert trained.count("<|im_end|>") == 2  # the model learns to stop


def test_raw_text_is_windowed_not_cut(tokenizer) -> None:
    text = "The sea was calm that night. " * 40
    pieces = encode_examples([{"text": text}], tokenizer, 64)
    assert len(pieces) > 1 and all(len(p.input_ids) <= 64 for p in pieces)
    assert all(p.labels == p.input_ids for p in pieces)
    assert sum(len(p.input_ids) for p in pieces) == len(tokenizer(text)["input_ids"]) + 1


def test_truncated_examples_without_targets_are_dropped(tokenizer) -> None:
    long_prompt = {
        "messages": [
            {"role": "user", "content": "word " * 200},
            {"role": "assistant", "content": "ok"},
        ]
    }
    assert encode_examples([long_prompt], tokenizer, 32) == []

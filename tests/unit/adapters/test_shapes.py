"""The one adapter-vs-base shape check that registration, export and GGUF export share."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraflow.adapters.inspect import LoraLayout, group_lora, shape_problems
from loraflow.errors import InvalidInput

BASE = {
    "model.embed_tokens.weight": (1000, 32),
    "model.layers.0.self_attn.q_proj.weight": (32, 32),
    "model.layers.0.mlp.up_proj.weight": (64, 32),
    "lm_head.weight": (1000, 32),
}


def test_fitting_linear_and_embedding_loras_have_no_problems() -> None:
    layout = group_lora(
        {
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": (4, 32),
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": (32, 4),
            "base_model.model.model.layers.0.mlp.up_proj.lora_A.weight": (4, 32),
            "base_model.model.model.layers.0.mlp.up_proj.lora_B.weight": (64, 4),
            # PEFT keeps embedding LoRAs as A (r, vocab) and B (dim, r).
            "base_model.model.model.embed_tokens.lora_embedding_A": (4, 1000),
            "base_model.model.model.embed_tokens.lora_embedding_B": (32, 4),
            "base_model.model.lm_head.weight": (1000, 32),  # modules_to_save
        },
        Path("adapter"),
    )
    assert layout.kinds["model.embed_tokens"] == "embedding"
    assert set(layout.extra) == {"lm_head.weight"}
    assert shape_problems(layout, BASE) == []


def test_a_wider_adapter_names_the_layer_and_both_shapes() -> None:
    layout = LoraLayout(
        pairs={
            "model.layers.0.mlp.up_proj": ((4, 64), (128, 4)),
            "model.layers.1.self_attn.q_proj": ((4, 32), (32, 4)),
        },
        kinds={"model.layers.0.mlp.up_proj": "linear", "model.layers.1.self_attn.q_proj": "linear"},
        extra={"lm_head.weight": (2000, 32)},
    )
    problems = shape_problems(layout, BASE)
    assert problems[0].startswith("model.layers.0.mlp.up_proj.weight has shape [64, 32]")
    assert "adapter expects in/out 64x128, base has 32x64" in problems[0]
    assert problems[1] == "model.layers.1.self_attn.q_proj: the base model has no such layer"
    assert "lm_head.weight has shape [1000, 32] in the base model and [2000, 32]" in problems[2]


def test_unpaired_factors_are_refused() -> None:
    with pytest.raises(InvalidInput, match="lora_A but no lora_B for module 'model.x'"):
        group_lora({"base_model.model.model.x.lora_A.weight": (4, 8)}, Path("adapter"))
    with pytest.raises(InvalidInput, match="holds no LoRA weights"):
        group_lora({"base_model.model.lm_head.weight": (10, 8)}, Path("adapter"))

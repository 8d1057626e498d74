"""MaskDropout and heap reuse: the CPU training speed-ups must not change what is learned."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from loraflow.training.cpu_speed import MaskDropout, retain_freed_memory, use_mask_dropout


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_mask_dropout_drops_p_of_the_elements_and_rescales_the_rest(p: float) -> None:
    drop = MaskDropout(p).train()
    x = torch.ones(400, 1000)
    y = drop(x)
    dropped = float((y == 0).float().mean())
    # 400k Bernoulli draws: the standard deviation of the rate is below 0.0008.
    assert abs(dropped - p) < 0.004
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / (1 - p)), rtol=1e-4)
    # Unbiased: the expected value of every element is kept.
    assert abs(float(y.mean()) - 1.0) < 0.01


def test_mask_dropout_masks_are_independent_and_positions_uniform() -> None:
    drop = MaskDropout(0.5).train()
    x = torch.ones(2000, 64)
    a, b = drop(x) == 0, drop(x) == 0
    # Two calls draw different masks that agree about half of the time.
    assert abs(float((a == b).float().mean()) - 0.5) < 0.01
    # Every one of the four 16-bit lanes of a 64-bit draw is used evenly.
    for lane in range(4):
        assert abs(float(a.reshape(-1, 4)[:, lane].float().mean()) - 0.5) < 0.02


def test_mask_dropout_follows_the_seed_eval_mode_and_gradients() -> None:
    drop = MaskDropout(0.1).train()
    x = torch.randn(3, 50, 40, requires_grad=True)
    torch.manual_seed(7)
    y1 = drop(x)
    torch.manual_seed(7)
    y2 = drop(x)
    assert torch.equal(y1, y2)
    (grad,) = torch.autograd.grad(y1.sum(), x)
    # The gradient is the mask times the scale: zero exactly where the output was dropped.
    kept = y1 != 0
    assert torch.all(grad[~kept] == 0)
    assert torch.allclose(grad[kept], torch.full_like(grad[kept], 1 / 0.9), rtol=1e-4)
    assert torch.equal(drop.eval()(x), x)
    assert isinstance(drop, nn.Dropout) and drop.p == 0.1


def test_only_lora_dropouts_are_swapped_and_saved_adapters_do_not_change(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    model = get_peft_model(
        base, LoraConfig(r=4, lora_dropout=0.1, target_modules=["q_proj", "v_proj"])
    )
    layers = model.config.num_hidden_layers
    model.save_pretrained(tmp_path / "before")
    assert use_mask_dropout(model) == 2 * layers
    swapped = [m for m in model.modules() if isinstance(m, MaskDropout)]
    assert len(swapped) == 2 * layers and all(m.p == 0.1 for m in swapped)
    assert use_mask_dropout(model) == 0  # already swapped
    model.save_pretrained(tmp_path / "after")
    before = load_file(tmp_path / "before" / "adapter_model.safetensors")
    after = load_file(tmp_path / "after" / "adapter_model.safetensors")
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_memory_retention_applies_on_glibc_and_training_still_runs() -> None:
    import platform

    with retain_freed_memory() as applied:
        x = torch.randn(1024, 1024, requires_grad=True)
        (x @ x).sum().backward()
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert applied
    assert x.grad is not None

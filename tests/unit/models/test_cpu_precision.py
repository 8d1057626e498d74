"""Base linears in bf16 / int8: still nn.Linear for PEFT, close to fp32, rows independent."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from loraflow.models.cpu_precision import (
    LowPrecisionLinear,
    activation_ranges,
    apply_cpu_precision,
    cpu_precision_of,
    smoothing,
)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize(("precision", "tol"), [("bf16", 0.01), ("int8", 0.05)])
def test_close_to_fp32(precision: str, tol: float) -> None:
    torch.manual_seed(0)
    lin = nn.Linear(64, 96)
    low = LowPrecisionLinear(lin, precision)
    x = torch.randn(5, 1, 64)
    with torch.inference_mode():
        assert _rel(low(x), lin(x)) < tol
        assert low(x).shape == (5, 1, 96)


def test_int8_rows_are_quantized_on_their_own() -> None:
    torch.manual_seed(0)
    low = LowPrecisionLinear(nn.Linear(64, 32), "int8")
    x = torch.randn(8, 1, 64)
    x[3] *= 100  # one loud row must not coarsen the others
    with torch.inference_mode():
        batch = low(x)
        alone = torch.cat([low(x[i : i + 1]) for i in range(8)])
    assert torch.equal(batch, alone)


def test_prompts_and_gradients_take_the_exact_fp32_product() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(16, 8)
    low = LowPrecisionLinear(lin, "int8")
    prompt = torch.randn(1, 6, 16)
    with torch.inference_mode():
        assert torch.equal(low(prompt), lin(prompt))
    x = torch.randn(1, 1, 16, requires_grad=True)
    low(x).sum().backward()
    assert x.grad is not None


def test_repacks_after_the_weight_changes_in_place() -> None:
    lin = nn.Linear(16, 8)
    low = LowPrecisionLinear(lin, "bf16")
    x = torch.randn(1, 1, 16)
    with torch.inference_mode():
        before = low(x)
    with torch.no_grad():
        lin.weight.mul_(2)
    with torch.inference_mode():
        assert _rel(low(x), lin(x)) < 0.01
        assert not torch.allclose(low(x), before)


def test_apply_swaps_plain_linears_and_keeps_tied_weights() -> None:
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 10))
    model[3].weight = model[0].weight  # tied, as SmolLM2's lm_head is to its embedding
    tied = model[3].weight
    assert cpu_precision_of(model) == "fp32"
    assert apply_cpu_precision(model, "fp32") == 0
    assert apply_cpu_precision(model, "int8") == 2
    assert isinstance(model[1], nn.Linear) and isinstance(model[1], LowPrecisionLinear)
    assert model[3].weight is tied
    assert cpu_precision_of(model) == "int8"
    # Already swapped layers are left alone.
    assert apply_cpu_precision(model, "int8") == 0
    with pytest.raises(ValueError, match="fp16"):
        apply_cpu_precision(model, "fp16")


def test_int8_keeps_the_lm_head_and_down_projections_in_fp32() -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up_proj, self.down_proj = nn.Linear(8, 16), nn.Linear(16, 8)

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block, self.lm_head = Block(), nn.Linear(8, 10)

    model = Model()
    assert apply_cpu_precision(model, "int8") == 1
    assert isinstance(model.block.up_proj, LowPrecisionLinear)
    assert type(model.block.down_proj) is nn.Linear and type(model.lm_head) is nn.Linear
    # bf16 keeps the products' precision well enough to take every linear.
    assert apply_cpu_precision(Model(), "bf16") == 3


def test_int8_stays_close_with_an_outlier_channel() -> None:
    """LLM activations carry a few huge channels; the error must follow the input's scale."""
    torch.manual_seed(0)
    lin = nn.Linear(256, 128, bias=False)
    low = LowPrecisionLinear(lin, "int8")
    x = torch.randn(4, 1, 256)
    x[..., 7] = -300.0  # a massive activation, as in real models' residual streams
    with torch.inference_mode():
        ref = lin(x)
        # Standard asymmetric 7-bit quantization of x: error ~ span / 127 per element.
        assert _rel(low(x), ref) < 0.05  # 0.036 here; fp32 row sums gave 0.076


def test_int8_with_the_bf16_companion_runs_kept_linears_and_prompts_in_bf16() -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up_proj, self.down_proj = nn.Linear(8, 16), nn.Linear(16, 8)

    model = nn.Sequential(Block())
    torch.manual_seed(0)
    up = model[0].up_proj
    reference = nn.Linear(8, 16)
    reference.load_state_dict(up.state_dict())
    assert apply_cpu_precision(model, "int8", companion="bf16") == 2
    assert cpu_precision_of(model) == "int8+bf16"
    down = model[0].down_proj
    assert isinstance(down, LowPrecisionLinear) and down.precision == "bf16"
    low = model[0].up_proj
    assert isinstance(low, LowPrecisionLinear) and (low.precision, low.prompts) == ("int8", "bf16")
    prompt = torch.randn(1, 6, 8)
    with torch.inference_mode():
        got, want = low(prompt), reference(prompt)
        # A prompt's product in bf16: close to fp32, and not the exact fp32 one.
        assert _rel(got, want) < 0.01 and not torch.equal(got, want)
        # bf16 rounds the input as the kernel does: same as a bf16 product by hand.
        by_hand = nn.functional.linear(
            prompt.bfloat16(), up.weight.bfloat16(), up.bias.bfloat16()
        ).float()
        assert torch.equal(got, by_hand)
    with pytest.raises(ValueError, match="fp16"):
        apply_cpu_precision(nn.Sequential(nn.Linear(2, 2)), "int8", companion="fp16")


class _Block(nn.Module):
    """Three linears on one input (as q/k/v), then one on their sum (as o_proj)."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16)
        self.o = nn.Linear(16, 16)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = input_ids
        return self.o(self.q(x) + self.k(x) + self.v(x))


def test_calibration_groups_linears_on_one_input_and_smooths_them_alike() -> None:
    torch.manual_seed(0)
    block = _Block()
    x = torch.randn(2, 5, 16)
    x[..., 3] *= 40  # an outlier channel, as LLM activations have
    ranges = activation_ranges(block, [x])
    groups = {name: ranges[getattr(block, name)][0] for name in "qkvo"}
    assert groups["q"] == groups["k"] == groups["v"] != groups["o"]
    assert torch.equal(ranges[block.q][1], x.abs().reshape(-1, 16).amax(0))
    factors = smoothing(ranges)
    assert torch.equal(factors[block.q], factors[block.v])
    assert int(factors[block.q].argmax()) == 3  # the loud channel is divided most
    # No hook stays behind: a later forward records nothing.
    with torch.inference_mode():
        block(x)
    assert not block.q._forward_hooks


class _One(nn.Module):
    def __init__(self, lin: nn.Linear) -> None:
        super().__init__()
        self.lin = lin

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lin(input_ids)


def test_smoothing_brings_int8_closer_to_fp32_on_an_outlier_channel() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(256, 128)
    calib = torch.randn(64, 256)
    calib[:, 7] *= 60
    x = torch.randn(6, 1, 256)
    x[..., 7] *= 60
    ranges = activation_ranges(_One(lin), [calib])
    plain = LowPrecisionLinear(lin, "int8")
    smoothed = LowPrecisionLinear(lin, "int8", smooth=smoothing(ranges)[lin])
    with torch.inference_mode():
        want = lin(x)
        # Rows stay independent with smoothing too.
        alone = torch.cat([smoothed(x[i : i + 1]) for i in range(6)])
        assert torch.equal(smoothed(x), alone)
        assert _rel(smoothed(x), want) < _rel(plain(x), want) / 2


def test_calibrated_int8_covers_the_linears_it_would_otherwise_keep() -> None:
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up = nn.Linear(8, 8)
            self.down_proj = nn.Linear(8, 8)
            self.lm_head = nn.Linear(8, 4)

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.lm_head(self.down_proj(self.up(input_ids)))

    model = Model()
    ranges = activation_ranges(model, [torch.randn(3, 8)])
    assert apply_cpu_precision(model, "int8", ranges=ranges) == 3
    assert all(m.smooth is not None for m in model.modules() if isinstance(m, LowPrecisionLinear))
    assert cpu_precision_of(model) == "int8"
    other = Model()
    ranges = activation_ranges(other, [torch.randn(3, 8)])
    apply_cpu_precision(other, "int8", companion="bf16", ranges=ranges)
    # Every linear int8, prompts in bf16: still int8 with its bf16 companion.
    assert cpu_precision_of(other) == "int8+bf16"


def test_int8_prompts_quantize_each_token_of_a_prompt_on_its_own() -> None:
    torch.manual_seed(0)
    model = _One(nn.Linear(16, 16))
    ranges = activation_ranges(model, [torch.randn(4, 16)])
    apply_cpu_precision(model, "int8", ranges=ranges, int8_prompts=True)
    lin = model.lin
    assert isinstance(lin, LowPrecisionLinear) and lin.prompts == "int8"
    prompt = torch.randn(2, 6, 16)
    prompt[1, 2] *= 50  # a loud token must not coarsen the other tokens of its prompt
    with torch.inference_mode():
        whole = lin(prompt)
        # Each token as a decode step alone gives the same numbers: a prompt's product does
        # not depend on what else is in the pass.
        alone = torch.stack(
            [torch.cat([lin(prompt[b, i].view(1, 1, 16)) for i in range(6)], 1)[0]
             for b in range(2)]
        )  # fmt: skip
        exact = nn.functional.linear(prompt, lin.weight, lin.bias)
    assert torch.equal(whole, alone)
    assert not torch.equal(whole, exact) and _rel(whole, exact) < 0.05
    # With the bf16 companion, prompts stay in bf16 (the companion is the faster path there).
    other = _One(nn.Linear(16, 16))
    ranges = activation_ranges(other, [torch.randn(4, 16)])
    apply_cpu_precision(other, "int8", companion="bf16", ranges=ranges, int8_prompts=True)
    assert isinstance(other.lin, LowPrecisionLinear) and other.lin.prompts == "bf16"


def test_int8_counts_as_uncalibrated_only_when_no_linear_was_calibrated() -> None:
    from loraflow.models.cpu_precision import int8_uncalibrated

    def linear() -> torch.nn.Linear:
        return torch.nn.Linear(8, 8)

    ones = torch.ones(8)
    # A linear the calibration text never reached runs unsmoothed beside calibrated ones.
    mixed = torch.nn.Sequential(
        LowPrecisionLinear(linear(), "int8", smooth=ones), LowPrecisionLinear(linear(), "int8")
    )
    assert not int8_uncalibrated(mixed)
    fallback = torch.nn.Sequential(LowPrecisionLinear(linear(), "int8"), linear())
    assert int8_uncalibrated(fallback)
    assert not int8_uncalibrated(torch.nn.Sequential(LowPrecisionLinear(linear(), "bf16")))

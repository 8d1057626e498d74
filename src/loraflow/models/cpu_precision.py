"""Base-model linears in bf16 or int8 on CPU, with the fp32 weights and the LoRA path kept.

`apply_cpu_precision(model, "bf16")` swaps every `nn.Linear` of a loaded model (lm_head
included: tied to the embedding, it is 28M of SmolLM2-135M's 135M weights) for a
`LowPrecisionLinear`; "int8" swaps all but the LM head and the MLP's down projections
(`INT8_KEPT`). That is still an `nn.Linear` holding the same fp32 weight, so PEFT
wraps it like any other, adapters load, merge and unload as before, and LoRA deltas are
computed in fp32 beside it; only the base product runs in the lower precision.

Why not `torch.ao.quantization.quantize_dynamic` on the model: it replaces the layers by
modules PEFT does not recognise (no LoRA could attach). Its kernel is what runs here.
Why keep the fp32 weight: prompts (several tokens per row) run in fp32, decode steps in
int8. With fbgemm's one activation range per input, a whole prompt in int8 raised SmolLM2's
perplexity 2.5x; each row is therefore quantized on its own (see `_int8_rows`), and the
prompt, whose cached keys and values every later token reads, keeps full precision.
`torch._weight_int8pack_mm` and the int4 pack kernels were 6-14x slower than fp32 on the
hosts measured (DESIGN.md): not used.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

PRECISIONS = ("fp32", "bf16", "int8")
# Linears int8 leaves in fp32: their inputs are where dynamic int8 loses most. The LM head
# reads the final hidden state (its int8 product alone raised SmolLM2's perplexity 5.5%);
# down_proj's inputs carry the MLP's outlier channels. With both kept, perplexity stayed
# within 0.2% of fp32 (docs/BENCHMARKS.md) and int8 still covers ~75% of the decoder weights.
INT8_KEPT = ("lm_head", "down_proj")


class LowPrecisionLinear(nn.Linear):
    """An `nn.Linear` whose forward runs in bf16 or dynamic int8 (fbgemm); weights stay fp32."""

    def __init__(self, linear: nn.Linear, precision: str) -> None:
        # nn.Module's init only: the weight is the original Parameter, not a new allocation.
        nn.Module.__init__(self)
        if precision not in ("bf16", "int8"):
            raise ValueError(f"precision {precision!r} is not one of ['bf16', 'int8']")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.precision = precision
        self._packed: Any = None
        self._packed_version = -1

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, precision={self.precision}"

    def _pack(self) -> Any:
        # Re-packed when the fp32 weight changed in place (an adapter merged into it).
        version = self.weight._version
        if self._packed is None or self._packed_version != version:
            with torch.no_grad():
                self._packed = (
                    self.weight.detach().to(torch.bfloat16)
                    if self.precision == "bf16"
                    else _int8_linear(self.weight.detach())
                )
            self._packed_version = version
        return self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            # Training or gradient checks: the exact fp32 product (int8 has no gradient).
            return super().forward(x)
        if self.precision == "bf16":
            bias = None if self.bias is None else self.bias.to(torch.bfloat16)
            w = self._pack()
            return nn.functional.linear(x.to(torch.bfloat16), w, bias).to(x.dtype)
        if x.dim() >= 2 and x.shape[-2] > 1:
            # Several tokens per row (a prompt): one activation scale for all would lose them.
            return super().forward(x)
        return _int8_rows(x, self._pack(), self.bias)


def _int8_rows(x: torch.Tensor, packed: Any, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ W.T (+ bias) with fbgemm's dynamic int8 kernel, each row quantized on its own.

    The kernel takes one activation range for the whole input; rows of a batch would share
    it, so one loud row would coarsen the others and a batched answer would differ from the
    same request alone. Each row is mapped onto [0, 1] by its own minimum and span, and given
    two extra inputs, 0 and 1 (their weight columns are zero): every input then spans exactly
    [0, 1], so the shared range is each row's own. Since W x = span * W x' + lo * W 1, the
    row's span scales the product back and its minimum adds the weight's row sums.
    """
    weights, row_sums = packed
    flat = x.reshape(-1, x.shape[-1]).float()
    lo = flat.amin(dim=1, keepdim=True)
    span = (flat.amax(dim=1, keepdim=True) - lo).clamp_min(torch.finfo(torch.float32).tiny)
    ends = torch.tensor([[0.0, 1.0]]).expand(flat.shape[0], 2)
    unit = torch.cat([(flat - lo) / span, ends], 1)
    out = torch.ops.quantized.linear_dynamic(unit, weights, True) * span + lo * row_sums
    if bias is not None:
        out = out + bias
    return out.reshape(*x.shape[:-1], out.shape[-1]).to(x.dtype)


def _int8_linear(weight: torch.Tensor) -> tuple[Any, torch.Tensor]:
    """fbgemm's packed int8 weight (per output channel, two zero columns appended) and the
    fp32 weight's row sums."""
    with warnings.catch_warnings():
        # torch says its quantized tensors move to torchao; the fbgemm kernels still run.
        warnings.simplefilter("ignore")
        w = torch.cat([weight.float(), weight.new_zeros(weight.shape[0], 2)], 1)
        # One scale per output channel keeps rows of small weights from rounding to zero.
        scale = (w.abs().amax(dim=1) / 127).clamp_min(1e-12).double()
        zero = torch.zeros(w.shape[0], dtype=torch.long)
        q = torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)
        # The row sums of the *quantized* weight: W_q x' span + lo W_q 1 is then W_q x_q, plain
        # asymmetric quantization. The fp32 sums would leave W_q's rounding error times each
        # row's minimum uncorrected, which the outlier channels of LLM activations make large.
        return torch.ops.quantized.linear_prepack(q, None), q.dequantize().sum(dim=1).float()


def apply_cpu_precision(model: nn.Module, precision: str) -> int:
    """Run `model`'s linears in `precision` ("fp32" leaves it as is); returns how many."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {list(PRECISIONS)}")
    if precision == "fp32":
        return 0
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if precision == "int8" and name in INT8_KEPT:
                continue
            # Exactly nn.Linear: LoRA layers, already swapped layers and quantized kinds stay.
            if type(child) is nn.Linear and child.weight.dtype == torch.float32:
                setattr(parent, name, LowPrecisionLinear(child, precision))
                swapped += 1
    return swapped


def cpu_precision_of(model: nn.Module) -> str:
    """The precision `apply_cpu_precision` gave `model` ("fp32" when none)."""
    for module in model.modules():
        if isinstance(module, LowPrecisionLinear):
            return module.precision
    return "fp32"

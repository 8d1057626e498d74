"""Base-model linears in bf16 or int8 on CPU, with the fp32 weights and the LoRA path kept.

`apply_cpu_precision(model, "bf16")` swaps every `nn.Linear` of a loaded model (lm_head
included: tied to the embedding, it is 28M of SmolLM2-135M's 135M weights) for a
`LowPrecisionLinear`; "int8" swaps all but the LM head and the MLP's down projections
(`INT8_KEPT`), which stay fp32 or, with the bf16 companion on a CPU with native bf16, run
in bf16 (as do prompts then). That is still an `nn.Linear` holding the same fp32 weight, so PEFT
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
# What int8 runs beside it: the linears it keeps (INT8_KEPT) and every prompt. bf16 only
# where the CPU has native bf16 products (hardware.int8_companion decides).
COMPANIONS = ("fp32", "bf16")
_TINY = torch.finfo(torch.float32).tiny
# The two inputs every int8 row gets besides its own (see _int8_rows).
_ENDS = torch.tensor([[0.0, 1.0]])
# Linears int8 leaves in fp32: their inputs are where dynamic int8 loses most. The LM head
# reads the final hidden state (its int8 product alone raised SmolLM2's perplexity 5.5%);
# down_proj's inputs carry the MLP's outlier channels. With both kept, perplexity stayed
# within 0.2% of fp32 (docs/BENCHMARKS.md) and int8 still covers ~75% of the decoder weights.
INT8_KEPT = ("lm_head", "down_proj")


class LowPrecisionLinear(nn.Linear):
    """An `nn.Linear` whose forward runs in bf16 or dynamic int8 (fbgemm); weights stay fp32.

    An int8 linear runs prompts (several tokens per row) in `prompts` precision: fp32, or
    bf16 on a CPU where bf16 products are fast (the int8 path's bf16 companion).
    """

    def __init__(self, linear: nn.Linear, precision: str, prompts: str = "fp32") -> None:
        # nn.Module's init only: the weight is the original Parameter, not a new allocation.
        nn.Module.__init__(self)
        if precision not in ("bf16", "int8"):
            raise ValueError(f"precision {precision!r} is not one of ['bf16', 'int8']")
        if prompts not in COMPANIONS:
            raise ValueError(f"prompt precision {prompts!r} is not one of {list(COMPANIONS)}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.precision = precision
        self.prompts = prompts if precision == "int8" else precision
        self._packs: dict[str, tuple[int, Any]] = {}

    def extra_repr(self) -> str:
        extra = f", prompts={self.prompts}" if self.prompts != self.precision else ""
        return f"{super().extra_repr()}, precision={self.precision}{extra}"

    def _pack(self, kind: str) -> Any:
        # Re-packed when the fp32 weight changed in place (an adapter merged into it).
        version = self.weight._version
        packed = self._packs.get(kind)
        if packed is None or packed[0] != version:
            with torch.no_grad():
                w = self.weight.detach()
                if kind == "bf16":
                    bias = None if self.bias is None else self.bias.detach().to(torch.bfloat16)
                    packed = (version, (w.to(torch.bfloat16), bias))
                else:
                    packed = (version, _int8_linear(w))
            self._packs[kind] = packed
        return packed[1]

    def _bf16(self, x: torch.Tensor) -> torch.Tensor:
        w, bias = self._pack("bf16")
        return nn.functional.linear(x.to(torch.bfloat16), w, bias).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            # Training or gradient checks: the exact fp32 product (int8 has no gradient).
            return super().forward(x)
        if self.precision == "bf16":
            return self._bf16(x)
        if x.dim() >= 2 and x.shape[-2] > 1:
            # Several tokens per row (a prompt): one activation scale for all would lose them.
            return self._bf16(x) if self.prompts == "bf16" else super().forward(x)
        return _int8_rows(x, self._pack("int8"), self.bias)


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
    lo, hi = torch.aminmax(flat, dim=1, keepdim=True)
    span = (hi - lo).clamp_min_(_TINY)
    unit = torch.cat([(flat - lo).div_(span), _ENDS.expand(flat.shape[0], 2)], 1)
    # lo * row_sums (+ bias) as one outer product, then + product * span: few calls a step.
    shift = lo * row_sums if bias is None else torch.addmm(bias, lo, row_sums)
    out = torch.addcmul(shift, torch.ops.quantized.linear_dynamic(unit, weights, True), span)
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
        sums = q.dequantize().sum(dim=1).float().unsqueeze(0)  # [1, out]
        return torch.ops.quantized.linear_prepack(q, None), sums


def apply_cpu_precision(model: nn.Module, precision: str, companion: str = "fp32") -> int:
    """Run `model`'s linears in `precision` ("fp32" leaves it as is); returns how many.

    For int8, `companion` is the precision of the linears int8 keeps and of prompts: fp32,
    or bf16 (on a CPU with native bf16: the int8 path's quality, fewer bytes a token).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {list(PRECISIONS)}")
    if companion not in COMPANIONS:
        raise ValueError(f"companion {companion!r} is not one of {list(COMPANIONS)}")
    if precision == "fp32":
        return 0
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            # Exactly nn.Linear: LoRA layers, already swapped layers and quantized kinds stay.
            if type(child) is not nn.Linear or child.weight.dtype != torch.float32:
                continue
            if precision == "int8" and name in INT8_KEPT:
                if companion == "fp32":
                    continue
                setattr(parent, name, LowPrecisionLinear(child, companion))
            else:
                setattr(parent, name, LowPrecisionLinear(child, precision, prompts=companion))
            swapped += 1
    return swapped


def cpu_precision_of(model: nn.Module) -> str:
    """The precision `apply_cpu_precision` gave `model` ("fp32" when none): "int8+bf16" for
    int8 with its bf16 companion."""
    found = {m.precision for m in model.modules() if isinstance(m, LowPrecisionLinear)}
    if "int8" in found:
        return "int8+bf16" if "bf16" in found else "int8"
    return found.pop() if found else "fp32"

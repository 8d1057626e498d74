"""Base-model linears in bf16 or int8 on CPU, with the fp32 weights and the LoRA path kept.

`apply_cpu_precision(model, "bf16")` swaps every `nn.Linear` of a loaded model (lm_head
included: tied to the embedding, it is 28M of SmolLM2-135M's 135M weights) for a
`LowPrecisionLinear`; "int8" calibrated (what the engine loads) swaps every one too,
uncalibrated all but the LM head and the MLP's down projections (`INT8_KEPT`), which stay
fp32 or, with the bf16 companion on a CPU with native bf16, run in bf16 (as do prompts
then). That is still an `nn.Linear` holding the same fp32 weight, so PEFT
wraps it like any other, adapters load, merge and unload as before, and LoRA deltas are
computed in fp32 beside it; only the base product runs in the lower precision.

Why not `torch.ao.quantization.quantize_dynamic` on the model: it replaces the layers by
modules PEFT does not recognise (no LoRA could attach). Its kernel is what runs here.
Why keep the fp32 weight: training, merges and exact products read it, and prompts (several
tokens per row) may run in fp32 while decode steps run int8. With fbgemm's one activation
range per input, a whole prompt in int8 raised SmolLM2's perplexity 2.5x; each row (each
token of a prompt) is therefore quantized on its own (see `_int8_rows`). So quantized, a
prompt in int8 (`int8_prompts`, LOCAL_INT8_PROMPTS) costs what decode steps cost: held-out
perplexity 1.03-1.05x fp32 against 1.02x with fp32 prompts, for prompt evaluation 1.3-1.8x
faster on an AVX2 host (docs/BENCHMARKS.md); and a token's product then does not depend on
which other prompts share the pass (integer sums are exact).
`torch._weight_int8pack_mm` and the int4 pack kernels were 6-14x slower than fp32 on the
hosts measured (DESIGN.md): not used.

Calibrated int8 (`activation_ranges`, then `apply_cpu_precision(..., ranges=...)`): the few
input channels that carry outliers set each row's range, so every other channel of the row
keeps only a few of its 8 (7 on AVX2) bits. Dividing each input channel by a fixed factor,
and multiplying the weight's column by it, gives the same product with flatter rows
(SmoothQuant's migration, alpha 0.5); the factors come from one forward of a fixed text.
With them every linear, the LM head and down projections included, runs int8; on SmolLM2 the
engine bench measured perplexity 1.021x fp32 (uncalibrated, with those two kept: 1.018x) and
greedy agreement 89.8% (86.9%) with prompts in fp32, 1.046x and 86.5% with prompts in int8
too (docs/BENCHMARKS.md). Uncalibrated int8 keeps prompts in its companion's precision.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

PRECISIONS = ("fp32", "bf16", "int8")
# What int8 runs beside it: the linears uncalibrated int8 keeps (INT8_KEPT) and prompts (unless
# calibrated int8 runs them in int8 too: `int8_prompts`). bf16 only where the CPU has native
# bf16 products (hardware.int8_companion decides).
COMPANIONS = ("fp32", "bf16")
_TINY = torch.finfo(torch.float32).tiny
# The two inputs every int8 row gets besides its own (see _int8_rows).
_ENDS = torch.tensor([[0.0, 1.0]])
# Linears uncalibrated int8 leaves in fp32: their inputs are where dynamic int8 loses most
# without smoothing. The LM head reads the final hidden state (its int8 product alone raised
# SmolLM2's perplexity 5.5%); down_proj's inputs carry the MLP's outlier channels. With both
# kept, perplexity stayed within 0.2% of fp32 in a token-by-token check (docs/BENCHMARKS.md).
# Calibrated int8 (what the engine loads) smooths those inputs and quantizes these too.
INT8_KEPT = ("lm_head", "down_proj")


class LowPrecisionLinear(nn.Linear):
    """An `nn.Linear` whose forward runs in bf16 or dynamic int8 (fbgemm); weights stay fp32.

    An int8 linear runs prompts (several tokens per row) in `prompts` precision: fp32, bf16
    on a CPU where bf16 products are fast (the int8 path's bf16 companion), or int8, every
    token's row quantized on its own as in a decode step.
    """

    def __init__(
        self,
        linear: nn.Linear,
        precision: str,
        prompts: str = "fp32",
        smooth: torch.Tensor | None = None,
    ) -> None:
        # nn.Module's init only: the weight is the original Parameter, not a new allocation.
        nn.Module.__init__(self)
        if precision not in ("bf16", "int8"):
            raise ValueError(f"precision {precision!r} is not one of ['bf16', 'int8']")
        if prompts not in (*COMPANIONS, "int8"):
            raise ValueError(f"prompt precision {prompts!r} is not one of {[*COMPANIONS, 'int8']}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.precision = precision
        self.prompts = prompts if precision == "int8" else precision
        # Per input channel: int8 products read x / smooth against W * smooth (see the module).
        self.smooth = None if smooth is None or precision != "int8" else smooth.float()
        self._unsmooth = None if self.smooth is None else (1.0 / self.smooth).unsqueeze(0)
        self._packs: dict[str, tuple[int, Any]] = {}

    def extra_repr(self) -> str:
        extra = f", prompts={self.prompts}" if self.prompts != self.precision else ""
        extra += ", smoothed" if self.smooth is not None else ""
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
                    scaled = w if self.smooth is None else w * self.smooth.unsqueeze(0)
                    packed = (version, _int8_linear(scaled))
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
        if x.dim() >= 2 and x.shape[-2] > 1 and self.prompts != "int8":
            # Several tokens per row (a prompt), whose keys and values every later token
            # reads: full precision (or the bf16 companion's) unless prompts are int8 too.
            return self._bf16(x) if self.prompts == "bf16" else super().forward(x)
        if self._unsmooth is not None:
            x = x * self._unsmooth
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
    flat = x.reshape(-1, x.shape[-1])
    flat = flat if flat.dtype == torch.float32 else flat.float()  # each call counts a step
    if flat.shape[0] > 1:  # aminmax along rows took 3-5x longer than the two calls here
        lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    else:
        lo, hi = torch.aminmax(flat, dim=1, keepdim=True)
    span = (hi - lo).clamp_min_(_TINY)
    unit = torch.cat([(flat - lo).div_(span), _ENDS.expand(flat.shape[0], 2)], 1)
    # lo * row_sums (+ bias) as one outer product, then + product * span: few calls a step.
    shift = lo * row_sums if bias is None else torch.addmm(bias, lo, row_sums)
    out = torch.addcmul(shift, torch.ops.quantized.linear_dynamic(unit, weights, True), span)
    out = out.reshape(*x.shape[:-1], out.shape[-1])
    return out if x.dtype == torch.float32 else out.to(x.dtype)


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


def apply_cpu_precision(
    model: nn.Module,
    precision: str,
    companion: str = "fp32",
    ranges: dict[nn.Module, tuple[int, torch.Tensor]] | None = None,
    *,
    int8_prompts: bool = False,
) -> int:
    """Run `model`'s linears in `precision` ("fp32" leaves it as is); returns how many.

    For int8, `companion` is the precision of the linears int8 keeps and of prompts: fp32,
    or bf16 (on a CPU with native bf16: the int8 path's quality, fewer bytes a token).
    `ranges` (from `activation_ranges`) calibrates int8: every linear it covers runs int8,
    the ones of INT8_KEPT included, smoothed by its input's measured range; with
    `int8_prompts` and the fp32 companion they run prompts in int8 too (rows quantized one by
    one, as decode steps are).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {list(PRECISIONS)}")
    if companion not in COMPANIONS:
        raise ValueError(f"companion {companion!r} is not one of {list(COMPANIONS)}")
    if precision == "fp32":
        return 0
    smooth = smoothing(ranges) if precision == "int8" and ranges else {}
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            # Exactly nn.Linear: LoRA layers, already swapped layers and quantized kinds stay.
            if type(child) is not nn.Linear or child.weight.dtype != torch.float32:
                continue
            if child in smooth:
                # The LM head reads one position at a time whatever the caller passes (a
                # prompt's logits or only its last): int8 rows throughout, so the first token
                # does not depend on how many positions a code path asked logits for.
                whole = name == "lm_head" or (int8_prompts and companion == "fp32")
                prompts = "int8" if whole else companion
                low = LowPrecisionLinear(child, "int8", prompts=prompts, smooth=smooth[child])
                setattr(parent, name, low)
            elif precision == "int8" and name in INT8_KEPT:
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
    low = [m for m in model.modules() if isinstance(m, LowPrecisionLinear)]
    found = {m.precision for m in low} | {m.prompts for m in low}
    found.discard("fp32")
    if "int8" in found:
        return "int8+bf16" if "bf16" in found else "int8"
    return found.pop() if found else "fp32"


def int8_prompts_of(model: nn.Module) -> bool:
    """Whether `model` evaluates prompts in int8 beyond the LM head (`int8_prompts`)."""
    return any(
        isinstance(m, LowPrecisionLinear) and m.precision == "int8" and m.prompts == "int8"
        for name, m in model.named_modules()
        if name.rsplit(".", 1)[-1] != "lm_head"
    )


def int8_uncalibrated(model: nn.Module) -> bool:
    """Whether `model` runs int8 linears and none of them calibrated (the form int8 falls
    back to when its calibration forward failed: LM head and down projections kept). A
    linear the calibration text never reached is int8 unsmoothed beside calibrated ones."""
    int8 = [
        m for m in model.modules() if isinstance(m, LowPrecisionLinear) and m.precision == "int8"
    ]
    return bool(int8) and all(m.smooth is None for m in int8)


# The text int8 calibrates on: the bundled sample documents, troubleshooting.md (the benches'
# held-out text for perplexity) left out, cut to CALIBRATION_TOKENS (one forward at load).
CALIBRATION_HELD_OUT = "troubleshooting.md"
CALIBRATION_TOKENS = 512


def calibration_batches(tokenizer: Any, tokens: int = CALIBRATION_TOKENS) -> list[torch.Tensor]:
    """Token ids of the fixed calibration text, as one batch of at most `tokens` (pass the
    model's context length when it is shorter)."""
    docs = Path(str(resources.files("loraflow") / "sample_data" / "docs"))
    text = "\n\n".join(
        p.read_text("utf-8") for p in sorted(docs.glob("*.md")) if p.name != CALIBRATION_HELD_OUT
    )
    ids = tokenizer(text, return_tensors="pt")["input_ids"][:, :tokens]
    return [ids]


# SmoothQuant's migration strength: how much of an input channel's range moves to the weight.
SMOOTH_ALPHA = 0.5


@torch.inference_mode()
def activation_ranges(
    model: nn.Module, batches: Iterable[torch.Tensor]
) -> dict[nn.Module, tuple[int, torch.Tensor]]:
    """Each plain fp32 nn.Linear's largest |input| per input channel over forwards of
    `batches` (token id tensors), with a group number: linears called one after another on
    the same input tensor (q/k/v, gate/up) share one, so their smoothing is one vector."""
    found: dict[nn.Module, tuple[int, torch.Tensor]] = {}
    last: list[Any] = [None, -1]  # the input tensor seen last, its group

    def hook(module: nn.Module, args: tuple[Any, ...], _out: Any) -> None:
        x = args[0]
        if x is not last[0]:
            last[0], last[1] = x, last[1] + 1
        peak = x.detach().float().abs().reshape(-1, x.shape[-1]).amax(0)
        known = found.get(module)
        found[module] = (last[1], peak if known is None else torch.maximum(known[1], peak))

    linears = [m for m in model.modules() if type(m) is nn.Linear]
    handles = [m.register_forward_hook(hook) for m in linears]
    try:
        for ids in batches:
            last[0] = None  # a new forward: no input is shared with the last one
            model(input_ids=ids)
    finally:
        for h in handles:
            h.remove()
        last[0] = None
    return found


def smoothing(ranges: dict[nn.Module, tuple[int, torch.Tensor]]) -> dict[nn.Module, torch.Tensor]:
    """Per linear, the factor each input channel is divided by (its weight column multiplied
    by): range^alpha / max|W column|^(1 - alpha), with the weight maximum taken over every
    linear of the group, so linears on one input (and a product fused from them) share it."""
    groups: dict[int, list[nn.Module]] = {}
    for module, (group, _) in ranges.items():
        groups.setdefault(group, []).append(module)
    out: dict[nn.Module, torch.Tensor] = {}
    for members in groups.values():
        peak = torch.stack([ranges[m][1] for m in members]).amax(0).clamp_min(1e-5)
        weight = torch.stack(
            [m.weight.detach().float().abs().amax(0) for m in members]  # type: ignore[operator]
        ).amax(0)
        factor = peak.pow(SMOOTH_ALPHA) / weight.clamp_min(1e-5).pow(1 - SMOOTH_ALPHA)
        factor = factor.clamp_min(1e-5)
        for m in members:
            out[m] = factor
    return out

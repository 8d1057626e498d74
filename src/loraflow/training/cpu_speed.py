"""Two CPU training costs that are not arithmetic: dropout masks and page faults.

Profiling a LoRA step of a small model on CPU (bench/train_throughput.py) showed the
matrix products at ~80% of the machine's peak, so what is left to gain is outside them:

- `nn.Dropout` on CPU draws one Mersenne-Twister number per element (`bernoulli_`); with
  dropout on every LoRA input that was ~6% of a step. `MaskDropout` draws 64 bits per four
  elements and compares them as 16-bit integers: the same kind of mask (drop probability
  p to within 1/65536, survivors scaled by 1 / (1 - p)), about three times cheaper.
- glibc hands every freed block above its mmap threshold back to the kernel, so each step
  page-faults its activations in again (zeroed pages). `retain_freed_memory` keeps freed
  memory in the heap for the next step instead.
"""

from __future__ import annotations

import ctypes
import logging
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
# The largest mmap threshold glibc accepts on 64-bit systems.
_MMAP_THRESHOLD_MAX = 32 * 2**20
_KEEP_FREE = 2**30
_DEFAULT_TOP_PAD = 128 * 1024


class MaskDropout(nn.Dropout):
    """`nn.Dropout` with a cheaper random mask for CPU tensors; CUDA keeps the fused kernel.

    Still an `nn.Dropout` (PEFT and others check for it), with the same `p`, the same
    train/eval behaviour, and its randomness from torch's generator, so `torch.manual_seed`
    makes runs repeat.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__(p)
        # An int16 r, uniform over [-32768, 32767], is dropped when r < threshold.
        self.threshold = round(p * 65536) - 32768
        kept = 1.0 - (self.threshold + 32768) / 65536
        self.scale = 1.0 / kept if kept > 0 else 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Off, all-or-nothing, in place, or not a CPU float tensor: the stock dropout.
        cheap = self.training and 0.0 < self.p < 1.0 and not self.inplace
        if not cheap or x.device.type != "cpu" or not x.is_floating_point():
            return super().forward(x)
        n = x.numel()
        # random_ from the int64 minimum with no upper bound fills all 64 bits.
        bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None)
        r = bits.view(torch.int16)[:n].view(x.shape)
        keep = (r >= self.threshold).to(x.dtype).mul_(self.scale)
        return x * keep


def use_mask_dropout(model: nn.Module) -> int:
    """Swap every plain `nn.Dropout` inside LoRA layers for `MaskDropout`; returns how many.

    Only the LoRA dropouts: they sit on every adapted projection's input, where the mask
    cost adds up. The swap holds no weights, so saved adapters are unchanged.
    """
    swapped = 0
    for module in model.modules():
        table = getattr(module, "lora_dropout", None)
        if not isinstance(table, nn.ModuleDict):
            continue
        for name, layer in list(table.items()):
            if type(layer) is nn.Dropout and not layer.inplace:
                fast = MaskDropout(layer.p)
                fast.train(layer.training)
                table[name] = fast
                swapped += 1
    return swapped


def _glibc() -> Any | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


@contextmanager
def retain_freed_memory() -> Iterator[bool]:
    """Keep memory freed by one training step in the heap for the next (glibc only).

    Raises glibc's mmap threshold to its maximum and its trim threshold to 1 GiB, so the
    activations of a step are reused rather than unmapped and faulted in again. Yields
    whether the setting applied. glibc cannot go back to adapting its thresholds, so on
    exit they are left where that adaptation settles after a few large blocks (mmap
    threshold 32 MiB, trim threshold twice that), and the memory held free is returned.
    """
    libc = _glibc()
    applied = bool(
        libc is not None
        and libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
        and libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_FREE)
        and libc.mallopt(_M_TOP_PAD, 64 * 2**20)
    )
    if libc is not None and not applied:
        log.debug("glibc refused the malloc thresholds; training with its defaults")
    try:
        yield applied
    finally:
        if applied:
            libc.mallopt(_M_TRIM_THRESHOLD, 2 * _MMAP_THRESHOLD_MAX)
            libc.mallopt(_M_TOP_PAD, _DEFAULT_TOP_PAD)
        if libc is not None:
            libc.malloc_trim(0)

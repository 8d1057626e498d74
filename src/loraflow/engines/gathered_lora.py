"""Mixed-adapter batches with one gathered LoRA product per layer (the Punica/S-LoRA idea).

PEFT's `adapter_names=` path loops over the distinct adapters of a batch inside every LoRA
layer: with 32 adapters that is 32 small sub-batch products (plus Python index lists) per
layer per decode step, and the loop costs more than the base model's own matmuls. Here each
LoRA layer keeps every attached adapter's A and B stacked (ranks zero-padded to the largest,
scaling folded in per slot), each row gathers its slot, and two batched matmuls compute all
rows' deltas at once. The LoRA weights stay PEFT's own tensors (copied into the stacks when
adapters change); PEFT still loads, saves, merges and serves uniform batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class _Stack:
    """One LoRA layer's adapters side by side: slot 0 is the base model (a zero delta)."""

    module: Any
    a: torch.Tensor  # [slots, r_max, in]
    b: torch.Tensor  # [slots, out, r_max], each slot's scaling folded in


class GatheredLoRA:
    """Runs a PeftModel's forward with per-row adapters through gathered batched matmuls."""

    def __init__(self, peft_model: Any) -> None:
        self._model = peft_model
        self._slots: dict[str, int] = {}
        self._stacks: list[_Stack] = []
        self._key: tuple = ()
        self._rows: torch.Tensor | None = None  # slot per batch row while a forward runs
        self._index: dict[int, _Stack] = {}
        self._hooks: list[Any] = []
        self.supported = self._build()

    # --- building ------------------------------------------------------------------------
    def _build(self) -> bool:
        names = sorted(self._model.peft_config)
        layers = plain_lora_layers(self._model, names)
        if not layers:
            self._key = self._current_key()
            return False
        self._slots = {name: i + 1 for i, name in enumerate(names)}
        self._stacks = [_stack(m, self._slots) for m in layers]
        self._index = {id(s.module): s for s in self._stacks}
        self._key = self._current_key()
        self._hooks = [s.module.register_forward_hook(self._hook) for s in self._stacks]
        return True

    def _current_key(self) -> tuple:
        # Attaching, detaching or reloading an adapter in place changes a name or a weight's
        # version counter; the first LoRA layer is enough to notice (all layers load together).
        first = self._stacks[0].module if self._stacks else None
        versions = tuple(
            (n, first.lora_A[n].weight._version, first.lora_B[n].weight._version)
            for n in sorted(first.lora_A)
        ) if first is not None else ()  # fmt: skip
        return (tuple(sorted(self._model.peft_config)), versions)

    def current(self, peft_model: Any) -> bool:
        """Whether the stacks still match the adapters attached to `peft_model`."""
        return peft_model is self._model and self._current_key() == self._key

    def close(self) -> None:
        """Remove the forward hooks (the PeftModel is back to PEFT's own forward)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    # --- running -------------------------------------------------------------------------
    @contextmanager
    def rows(self, adapter_names: list[str | None]) -> Iterator[None]:
        """Within the block, the model's LoRA layers apply adapter `adapter_names[i]` to row i."""
        device = self._stacks[0].a.device
        slots = torch.tensor([self._slots[n] if n else 0 for n in adapter_names], device=device)
        layers = [s.module for s in self._stacks]
        for m in layers:
            # PEFT's own LoRA branch is switched off; the hook adds the gathered delta instead.
            m._disable_adapters = True
        self._rows = slots
        try:
            yield
        finally:
            self._rows = None
            for m in layers:
                m._disable_adapters = False

    def _hook(self, module: Any, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if self._rows is None:
            return None
        stack = self._index[id(module)]
        x = args[0].to(stack.a.dtype)
        a = stack.a.index_select(0, self._rows)  # [B, r, in]
        b = stack.b.index_select(0, self._rows)  # [B, out, r]
        shape = x.shape
        flat = x.reshape(shape[0], -1, shape[-1])  # [B, T, in]
        delta = torch.bmm(torch.bmm(flat, a.transpose(1, 2)), b.transpose(1, 2))
        return output + delta.reshape(*shape[:-1], -1).to(output.dtype)


def plain_lora_layers(model: Any, names: list[str]) -> list[Any] | None:
    """`model`'s LoRA Linear layers when every adapter layer is plain LoRA of `names`; else None.

    Plain: LoRA on Linear layers only, with no DoRA/variants, LoRA bias, transposed (Conv1D)
    weights or merged adapters. LoRA on embeddings, modules_to_save copies and trainable tokens
    follow PEFT's adapter_names, which per-row paths do not pass: PEFT runs those.
    """
    from peft.tuners.lora.layer import Linear as LoraLinear
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    layers = []
    for m in model.modules():
        if isinstance(m, LoraLinear):
            if not _plain(m, names):
                return None
            layers.append(m)
        elif isinstance(m, BaseTunerLayer | AuxiliaryTrainingWrapper):
            return None
    return layers


def _plain(module: Any, names: list[str]) -> bool:
    """Vanilla LoRA only: no DoRA/variants, no LoRA bias, no transposed (Conv1D) weights."""
    if getattr(module, "fan_in_fan_out", False) or not hasattr(module, "_disable_adapters"):
        return False
    if getattr(module, "merged_adapters", None):
        return False
    for name in module.lora_A:
        if name in getattr(module, "lora_variant", {}) or name not in names:
            return False
        if getattr(module.lora_B[name], "bias", None) is not None:
            return False
    return True


def _stack(module: Any, slots: dict[str, int]) -> _Stack:
    names = list(module.lora_A)
    ref = module.lora_A[names[0]].weight
    r_max = max(module.lora_A[n].weight.shape[0] for n in names)
    d_in = module.lora_A[names[0]].weight.shape[1]
    d_out = module.lora_B[names[0]].weight.shape[0]
    a = torch.zeros(len(slots) + 1, r_max, d_in, dtype=ref.dtype, device=ref.device)
    b = torch.zeros(len(slots) + 1, d_out, r_max, dtype=ref.dtype, device=ref.device)
    with torch.no_grad():
        for name in names:
            slot, wa, wb = slots[name], module.lora_A[name].weight, module.lora_B[name].weight
            rank = wa.shape[0]
            a[slot, :rank] = wa
            b[slot, :, :rank] = wb * module.scaling[name]
    return _Stack(module, a, b)

"""A lean decode path for Llama-family models: slot KV cache, per-row LoRA, few ops a step.

transformers' forward is general: per call it builds masks, walks cache objects, routes every
LoRA layer through PEFT's per-adapter loop and pads rows to the longest one. For a 135M model
on a CPU that bookkeeping costs more than the arithmetic. This module runs the same weights
(the loaded model's own tensors, the LoRA weights PEFT loaded) with a fixed sequence of
tensor ops:

- the KV cache is one tensor per layer, a slot per row; a row's tokens sit at positions
  0..n-1 of its slot (no left padding), a decode step writes each row's new key and value at
  its own position and attends over the longest row's length with a per-row mask;
- each adapter's A and B of every LoRA layer are stacked (rank zero-padded, scaling folded
  in); rows of one adapter use two plain matmuls, a mixed batch gathers each row's slot and
  runs two batched matmuls (the Punica/S-LoRA idea), the base rows add nothing;
- base linears run as the model's own modules, so LOCAL_PRECISION (bf16/int8) applies here
  too;
- a prompt's prefix whose keys and values are already known (a shared system prompt or a RAG
  preamble, seen in a recent request) is copied, not recomputed. Prompts are evaluated in
  chunks cut at fixed positions (`prompt_grid.LEAN_GRID`: 16, 64, then every 512;
  the llama.cpp engine does the same on its own grid) and reused only
  up to such a position, so every position is computed in the same chunk whether or not a
  prefix was reused: an answer does not depend on which request came before. Prompts that
  arrive together run as one pass (`prefill_many`; the base products over their real tokens
  only, not the padding), whose products over more rows can round differently in the last
  bits, as a decode step over several rows does.

Only what it can run exactly is taken: plain LoRA on the attention and MLP linears of a
Llama-shaped decoder (llama, mistral, qwen2: RMSNorm, rotary positions, grouped-query
attention, SiLU-gated MLP). Anything else (other architectures, DoRA, LoRA on embeddings,
modules_to_save) returns None from `LeanDecoder.build` and the scheduler keeps transformers.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from loraflow.engines.gathered_lora import plain_lora_layers
from loraflow.engines.prompt_grid import LEAN_GRID, LEAN_WAIT_TOKENS, grid_floor, reusable
from loraflow.models.cpu_precision import LowPrecisionLinear

ARCHITECTURES = ("llama", "mistral", "qwen2")
_QKV = ("q_proj", "k_proj", "v_proj")
# The KV cache grows in steps of this many positions (fewer reallocations).
_GROW = 256


@dataclass
class _Lora:
    """One LoRA layer's adapters side by side: slot 0 is the base model (no delta).

    PEFT's own lora_A / lora_B weights are re-pointed at these stacks (views), so attaching
    many adapters keeps one copy of their weights, not two.
    """

    a: torch.Tensor  # [slots, r_max, in]: slot s rows :r are adapter s's A
    bt: torch.Tensor  # [slots, r_max, out]: slot s rows :r are adapter s's B, transposed
    scale: torch.Tensor  # [slots]: each adapter's scaling (0 for the base)
    present: frozenset[int]  # slots that have weights in this layer


@dataclass
class _Proj:
    """One base product giving the outputs of one or more projections side by side.

    `base` is an nn.Linear (or LowPrecisionLinear) called as a module; with several parts it
    is the fused linear `_fused_base` made, `sizes` are the parts' widths and `loras` each
    part's adapters (None where no attached adapter has that projection).
    """

    base: Any
    sizes: list[int]
    loras: list[_Lora | None]


@dataclass
class _Layer:
    ln1: torch.Tensor
    ln2: torch.Tensor
    eps1: float
    eps2: float
    # q/k/v and gate/up: one fused product each where their bases allow, else one a part.
    qkv: list[_Proj] = field(default_factory=list)
    o: list[_Proj] = field(default_factory=list)
    gate_up: list[_Proj] = field(default_factory=list)
    down: list[_Proj] = field(default_factory=list)


class LeanDecoder:
    """Prefill and decode steps of a Llama-shaped model over rows that each own a cache slot."""

    def __init__(self, base: Any, slots: dict[str, int]) -> None:
        # PEFT wraps `base`'s linears in place: its layers reach the attached adapters.
        inner = base.model
        cfg = base.config
        self.heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.scale = self.head_dim**-0.5
        self.slots = slots  # adapter (PEFT name) -> slot; the base model is slot 0
        self._embed = inner.embed_tokens
        self._rotary = inner.rotary_emb
        self._norm = inner.norm
        self._lm_head = base.lm_head
        self.layers: list[_Layer] = []
        for layer in inner.layers:
            attn, mlp = layer.self_attn, layer.mlp
            item = _Layer(
                layer.input_layernorm.weight,
                layer.post_attention_layernorm.weight,
                float(layer.input_layernorm.variance_epsilon),
                float(layer.post_attention_layernorm.variance_epsilon),
            )
            item.qkv = _projections([getattr(attn, n) for n in _QKV], slots)
            item.o = _projections([attn.o_proj], slots)
            item.gate_up = _projections([mlp.gate_proj, mlp.up_proj], slots)
            item.down = _projections([mlp.down_proj], slots)
            self.layers.append(item)
        self.dtype = self._embed.weight.dtype
        self.device = self._embed.weight.device

    # --- which models -------------------------------------------------------------------
    @staticmethod
    def build(model: Any, base: Any) -> LeanDecoder | None:
        """A decoder over `model` (the PeftModel or the base), or None if it cannot run it."""
        cfg: Any = getattr(base, "config", None)
        if getattr(cfg, "model_type", None) not in ARCHITECTURES:
            return None
        if getattr(cfg, "hidden_act", "silu") != "silu" or not hasattr(base, "lm_head"):
            return None
        # A sliding attention window (Mistral v0.1, Qwen2 with it on) is not modelled here.
        window = getattr(cfg, "sliding_window", None)
        if window and getattr(cfg, "use_sliding_window", cfg.model_type == "mistral"):
            return None
        names: list[str] = []
        if model is not base:
            names = sorted(model.peft_config)
            if plain_lora_layers(model, names) is None:
                return None
        try:
            return LeanDecoder(base, {n: i + 1 for i, n in enumerate(names)})
        except (AttributeError, TypeError):
            return None

    def cache_bytes_per_token(self) -> int:
        """Bytes of keys and values one position takes over all layers."""
        size = torch.empty((), dtype=self.dtype).element_size()
        return 2 * len(self.layers) * self.kv_heads * self.head_dim * size

    # --- the forward pieces --------------------------------------------------------------
    def _rms(self, h: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        # transformers' LlamaRMSNorm, op for op (the same rounding); the casts are skipped
        # where they change nothing (fp32), as is every allocation an in-place op can save.
        wide = h.dtype != torch.float32
        x = h.to(torch.float32) if wide else h
        x = x * x.pow(2).mean(-1, keepdim=True).add_(eps).rsqrt_()
        return weight * (x.to(h.dtype) if wide else x)

    def _apply(self, projs: list[_Proj], x: torch.Tensor, rows: RowAdapters) -> list[torch.Tensor]:
        """The outputs of the projections `projs` stand for (base product plus each row's LoRA).

        A fused product's parts are views of one tensor, LoRA deltas added in place, so
        neighbouring parts (q and k) can be read as one (`_qkv`)."""
        outs: list[torch.Tensor] = []
        for proj in projs:
            out = proj.base(x) if rows.tokens is None else _packed(proj.base, x, rows.tokens)
            parts = [out] if len(proj.sizes) == 1 else list(out.split(proj.sizes, dim=-1))
            if rows.uniform != 0:
                for i, lora in enumerate(proj.loras):
                    if lora is not None:
                        self._lora(lora, x, parts[i], rows)
            outs += parts
        return outs

    @staticmethod
    def _lora(lora: _Lora, x: torch.Tensor, out: torch.Tensor, rows: RowAdapters) -> None:
        """Add each row's LoRA delta to `out` in place."""
        if rows.uniform is not None:
            if rows.uniform not in lora.present:
                return
            s = rows.uniform
            out.add_(((x @ lora.a[s].T) * lora.scale[s]) @ lora.bt[s])
            return
        a = lora.a.index_select(0, rows.index)  # [B, r, in]
        bt = lora.bt.index_select(0, rows.index)  # [B, r, out]
        h = torch.bmm(x, a.transpose(1, 2)) * lora.scale.index_select(0, rows.index).view(-1, 1, 1)
        out.add_(torch.bmm(h, bt))

    def _qkv(
        self, layer: _Layer, hs: torch.Tensor, rows: RowAdapters, cos: torch.Tensor,
        sin: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        """q and k ([B, heads, n, D], rotated) and v ([B, n, kv_heads * D]) of one layer.

        Where q/k/v are one fused product, q and k sit side by side in it and are rotated
        as one tensor: the same arithmetic element by element, half the calls."""
        b, n = hs.shape[0], hs.shape[1]
        q, k, v = self._apply(layer.qkv, hs, rows)
        heads, kv, dim = self.heads, self.kv_heads, self.head_dim
        if (
            len(layer.qkv) == 1
            and q.stride(-1) == 1
            and k.data_ptr() == q.data_ptr() + q.shape[-1] * q.element_size()
        ):
            qk = q.as_strided((b, n, heads + kv, dim), (q.stride(0), q.stride(1), dim, 1))
            qk = self._rope(qk.transpose(1, 2), cos, sin)
            return qk[:, :heads], qk[:, heads:], v
        q = self._rope(q.view(b, n, heads, dim).transpose(1, 2), cos, sin)
        k = self._rope(k.view(b, n, kv, dim).transpose(1, 2), cos, sin)
        return q, k, v

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return (x * cos).add_(rotated.mul_(sin))

    @torch.inference_mode()
    def prefill(
        self, cache: SlotCache, slot: int, ids: list[int], start: int, adapter_slot: int
    ) -> torch.Tensor:
        """Run tokens `ids` at positions start.. of cache slot `slot`; the last logits (V,)."""
        return self.prefill_many(cache, [Chunk(slot, ids, start, adapter_slot)])[0]

    @torch.inference_mode()
    def prefill_many(self, cache: SlotCache, chunks: list[Chunk]) -> torch.Tensor:
        """Run several rows' prompt chunks in one pass; each row's last logits, (rows, V).

        The rows are zero-padded to the longest chunk; the base linears run once over the
        real tokens of all of them (`_packed`: the padding skipped), the LoRA deltas over the
        padded rows; attention runs row by row as for a chunk alone, each over its own slot's
        keys, so padding never reaches a real position. Each chunk's keys and values land in
        its slot.
        """
        b = len(chunks)
        n = max(len(c.ids) for c in chunks)
        rows = RowAdapters.of([c.adapter_slot for c in chunks], self.device)
        real = sum(len(c.ids) for c in chunks)
        if PACK_PADDING and real < b * n:
            # The base products skip the padding: its positions come out as zeros.
            rows.tokens = torch.tensor(
                [i * n + j for i, c in enumerate(chunks) for j in range(len(c.ids))],
                device=self.device,
            )
        x = torch.tensor([c.ids + [0] * (n - len(c.ids)) for c in chunks], device=self.device)
        h = self._embed(x)
        offsets = torch.tensor([c.start for c in chunks], device=self.device)
        pos = offsets.unsqueeze(1) + torch.arange(n, device=self.device).unsqueeze(0)
        cos, sin = self._rotary(h, pos)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        cache.ensure(max(c.slot for c in chunks) + 1, max(c.start + len(c.ids) for c in chunks))
        causal: list[torch.Tensor | None] = []
        for c in chunks:
            if c.start:
                # Query i (position start+i) sees keys 0..start+i.
                here = torch.arange(c.start, c.start + len(c.ids), device=self.device)
                keys = torch.arange(c.start + len(c.ids), device=self.device)
                causal.append(keys.unsqueeze(0) <= here.unsqueeze(1))
            else:
                causal.append(None)
        width = self.heads * self.head_dim
        for li, layer in enumerate(self.layers):
            hs = self._rms(h, layer.ln1, layer.eps1)
            q, k, v = self._qkv(layer, hs, rows, cos, sin)
            v = v.view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
            ck, cv = cache.k[li], cache.v[li]
            att = h.new_zeros((b, n, width)) if b > 1 else None
            for i, c in enumerate(chunks):
                m, end = len(c.ids), c.start + len(c.ids)
                ck[c.slot, :, c.start : end] = k[i, :, :m]
                cv[c.slot, :, c.start : end] = v[i, :, :m]
                out = F.scaled_dot_product_attention(
                    q[i : i + 1, :, :m],
                    ck[c.slot : c.slot + 1, :, :end],
                    cv[c.slot : c.slot + 1, :, :end],
                    attn_mask=causal[i],
                    is_causal=causal[i] is None,
                    scale=self.scale,
                    enable_gqa=self.kv_heads != self.heads,
                )
                out = out.transpose(1, 2).reshape(1, m, width)
                if att is None:
                    att = out
                else:
                    att[i, :m] = out[0]
            assert att is not None
            h = h + self._apply(layer.o, att, rows)[0]
            h = h + self._mlp(layer, h, rows)
        last = torch.stack([h[i, len(c.ids) - 1] for i, c in enumerate(chunks)]).unsqueeze(1)
        return self._lm_head(self._norm(last))[:, -1]

    def _mlp(self, layer: _Layer, h: torch.Tensor, rows: RowAdapters) -> torch.Tensor:
        hs = self._rms(h, layer.ln2, layer.eps2)
        gate, up = self._apply(layer.gate_up, hs, rows)
        return self._apply(layer.down, F.silu(gate) * up, rows)[0]

    @torch.inference_mode()
    def decode(
        self, cache: SlotCache, tokens: list[int], positions: list[int], adapter_slots: list[int]
    ) -> torch.Tensor:
        """One token for each of rows 0..B-1 (row i in cache slot i); logits (B, V)."""
        b = len(tokens)
        rows = RowAdapters.of(adapter_slots, self.device)
        x = torch.tensor(tokens, device=self.device).unsqueeze(1)  # [B, 1]
        pos = torch.tensor(positions, device=self.device)
        h = self._embed(x)
        cos, sin = self._rotary(h, pos.unsqueeze(1))
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # [B, 1, 1, D]
        width = max(positions) + 1
        cache.ensure(b, width)
        # Each row attends to its own positions 0..pos; longer rows' columns are masked off.
        mask = torch.arange(width, device=self.device).unsqueeze(0) > pos.unsqueeze(1)
        bias = torch.zeros(mask.shape, dtype=self.dtype, device=self.device)
        bias = bias.masked_fill(mask, float("-inf")).view(b, 1, 1, width)
        every = torch.arange(b, device=self.device)
        groups = self.heads // self.kv_heads
        for li, layer in enumerate(self.layers):
            hs = self._rms(h, layer.ln1, layer.eps1)
            q, k, v = self._qkv(layer, hs, rows, cos, sin)  # q, k: [B, H, 1, D]
            ck, cv = cache.k[li], cache.v[li]
            ck[every, :, pos] = k[:, :, 0]
            cv[every, :, pos] = v.view(b, self.kv_heads, self.head_dim)
            keys, values = ck[:b, :, :width], cv[:b, :, :width]  # [B, KV, T, D]
            qg = q.reshape(b, self.kv_heads, groups, self.head_dim)
            scores = torch.matmul(qg, keys.transpose(-1, -2)) * self.scale + bias
            att = torch.matmul(scores.softmax(dim=-1), values)  # [B, KV, G, D]
            att = att.reshape(b, 1, self.heads * self.head_dim)
            h = h + self._apply(layer.o, att, rows)[0]
            h = h + self._mlp(layer, h, rows)
        return self._lm_head(self._norm(h))[:, -1, :]


# Whether a pass of prompts of unequal lengths runs its base products over the real tokens
# only (see `_packed`).
PACK_PADDING = True


def _packed(base: Any, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """`base(x)` for the positions `tokens` of x ([B, n, in]) only, zeros elsewhere.

    Prompts run together are zero-padded to the longest; a product over the padding costs as
    much as one over a real token and is never read. The real tokens go through as one
    prompt ([1, T, in]), so a low-precision linear still takes its prompt path."""
    b, n, width = x.shape
    picked = base(x.reshape(b * n, width).index_select(0, tokens).unsqueeze(0))[0]
    out = picked.new_zeros((b * n, picked.shape[-1]))
    out.index_copy_(0, tokens, picked)
    return out.view(b, n, -1)


@dataclass
class Chunk:
    """Prompt tokens `ids` to run at positions start.. of cache slot `slot`, with an adapter."""

    slot: int
    ids: list[int]
    start: int
    adapter_slot: int


@dataclass
class RowAdapters:
    """Each row's adapter slot; `uniform` is the one slot all rows share, if they do."""

    index: torch.Tensor
    uniform: int | None
    # A prompt pass's real (unpadded) positions in its [rows * longest] layout, or None.
    tokens: torch.Tensor | None = None

    @staticmethod
    def of(slots: list[int], device: Any) -> RowAdapters:
        first = slots[0]
        same = all(s == first for s in slots)
        return RowAdapters(torch.tensor(slots, device=device), first if same else None)


class SlotCache:
    """Keys and values of every layer, one slot per row: [slots, kv_heads, positions, dim]."""

    def __init__(
        self,
        layers: int,
        kv_heads: int,
        head_dim: int,
        dtype: Any,
        device: Any,
        max_rows: int = 0,
    ) -> None:
        self._shape = (kv_heads, head_dim)
        self._dtype, self._device = dtype, device
        self._max_rows = max_rows
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self._layers = layers
        self.rows = 0
        self.width = 0

    def ensure(self, rows: int, width: int) -> None:
        """Room for `rows` slots of `width` positions (grown, keeping what is there).

        Both grow in steps (rows doubling up to `max_rows`, positions by 256), so a batch
        that fills up one request at a time copies its cache a few times, not once a request.
        """
        if rows <= self.rows and width <= self.width:
            return
        new_rows = self.rows
        if rows > self.rows:
            new_rows = max(rows, 2 * self.rows)
            if self._max_rows:
                new_rows = max(rows, min(new_rows, self._max_rows))
        new_width = max(self.width, -(-width // _GROW) * _GROW)
        kv, dim = self._shape
        for store in (self.k, self.v):
            for i in range(self._layers):
                grown = torch.zeros(
                    (new_rows, kv, new_width, dim), dtype=self._dtype, device=self._device
                )
                if store and self.rows:
                    grown[: self.rows, :, : self.width] = store[i]
                if len(store) > i:
                    store[i] = grown
                else:
                    store.append(grown)
        self.rows, self.width = new_rows, new_width

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy slot `src`'s first `length` positions into slot `dst`."""
        for store in (self.k, self.v):
            for t in store:
                t[dst, :, :length] = t[src, :, :length]

    def take(self, slot: int, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A copy of slot `slot`'s first `length` positions, layer by layer."""
        return [(k[slot, :, :length].clone(), v[slot, :, :length].clone())
                for k, v in zip(self.k, self.v, strict=True)]  # fmt: skip

    def put(self, slot: int, kv: list[tuple[torch.Tensor, torch.Tensor]], length: int) -> None:
        """Write saved keys and values (their first `length` positions) into slot `slot`."""
        for (k, v), ck, cv in zip(kv, self.k, self.v, strict=True):
            ck[slot, :, :length] = k[:, :length]
            cv[slot, :, :length] = v[:, :length]


class PrefixStore:
    """Keys and values of recent prompts, per adapter, to reuse their longest shared prefix.

    Holds at most `budget` positions in all (LRU); a match shorter than `min_tokens` is not
    worth the copy. Keys and values depend on the adapter (LoRA on k/v), so an entry serves
    only requests for the same adapter.
    """

    def __init__(self, budget: int = 4096, min_tokens: int = 16) -> None:
        self._budget = budget
        self._min = min_tokens
        self._items: OrderedDict[tuple[str | None, tuple[int, ...]], list] = OrderedDict()
        self._held = 0

    @property
    def held(self) -> int:
        """Positions kept, over all entries."""
        return self._held

    def keep(self, adapters: set[str]) -> None:
        """Forget entries of adapters not in `adapters` (the base model's are kept)."""
        for key in [k for k in self._items if k[0] is not None and k[0] not in adapters]:
            self._drop(key)

    def _drop(self, key: tuple[str | None, tuple[int, ...]]) -> None:
        self._held -= len(key[1])
        del self._items[key]

    def lookup(self, adapter: str | None, ids: list[int]) -> tuple[int, list | None]:
        """(shared length, saved keys/values) of the best match; (0, None) when none helps.

        The prompt's last token is always left to compute: its logits pick the first token.
        The shared length is a chunk boundary of `prompt_grid.LEAN_GRID`. An entry that matched only
        in part by LEAN_WAIT_TOKENS or more is cut down to the shared part (what follows it was
        one request's own text), so a common system prompt ends up stored once, short. A
        shorter match (a chat template's default system prompt, shared by nearly every prompt)
        is copied out and the entry kept whole, or any request would cut down a conversation
        whose next turn could reuse it all.
        """
        best, found = 0, None
        for key in self._items:
            if key[0] != adapter:
                continue
            n = reusable(key[1], ids, LEAN_GRID)
            if n > best:
                best, found = n, key
        if found is None or best < self._min:
            return 0, None
        kv = self._items[found]
        if best < len(found[1]):
            if best >= LEAN_WAIT_TOKENS:
                self._drop(found)
            cut = (adapter, found[1][:best])
            if cut in self._items:
                # Already kept (the same positions, computed in the same chunks).
                kv = self._items[cut]
            else:
                kv = [(k[:, :best].clone(), v[:, :best].clone()) for k, v in kv]
                self._items[cut] = kv
                self._held += best
            found = cut
        self._items.move_to_end(found)
        return best, kv

    def save(self, adapter: str | None, ids: list[int], cache: SlotCache, slot: int) -> None:
        """Keep a copy of slot `slot`'s keys and values for prompt `ids`, up to its last
        chunk boundary: no later request can reuse more (`lookup` stops at one), so a prompt
        shorter than the first boundary is not kept at all, and prompts that share their
        boundary-cut prefix (a system prompt) are kept once."""
        ids = ids[: grid_floor(len(ids), LEAN_GRID)]
        if len(ids) < self._min or len(ids) > self._budget:
            return
        key = (adapter, tuple(ids))
        if key in self._items:
            self._items.move_to_end(key)
            return
        self._items[key] = cache.take(slot, len(ids))
        self._held += len(ids)
        while self._held > self._budget:
            self._drop(next(iter(self._items)))


def _projections(modules: list[Any], slots: dict[str, int]) -> list[_Proj]:
    """`modules` (PEFT-wrapped or plain linears reading the same input) as products to run:
    one fused product where their bases allow it, else one per module."""
    bases = [getattr(m, "base_layer", m) for m in modules]
    loras = [_lora_stack(m, slots) for m in modules]
    sizes = [int(b.out_features) for b in bases]
    fused = _fused_base(bases) if len(bases) > 1 else None
    if fused is not None:
        return [_Proj(fused, sizes, loras)]
    return [_Proj(b, [n], [lo]) for b, n, lo in zip(bases, sizes, loras, strict=True)]


# First base linear of a fused group -> (the fused linear, its parts' weight addresses then).
_FUSED: weakref.WeakKeyDictionary[Any, tuple[Any, tuple[int, ...]]] = weakref.WeakKeyDictionary()


def _fused_base(bases: list[Any]) -> Any | None:
    """One linear computing `bases`' products side by side (q/k/v, gate/up), or None.

    Fewer, larger products cost fewer calls a step (each LowPrecisionLinear call quantizes
    its input anew). The parts' weights (and biases) become views into the fused tensors, so
    nothing is held twice and the model's own modules read the same numbers. Only linears
    of one kind and precision (prompt precision and int8 smoothing included), on one input,
    fuse; the result is kept per model and made again if a part's weight was since replaced.
    """
    first = bases[0]
    kind = type(first)
    if kind not in (nn.Linear, LowPrecisionLinear):
        return None
    precision = getattr(first, "precision", None)
    prompts, smooth = getattr(first, "prompts", "fp32"), getattr(first, "smooth", None)
    for b in bases:
        if type(b) is not kind or getattr(b, "precision", None) != precision:
            return None
        if getattr(b, "prompts", "fp32") != prompts:
            return None
        mine = getattr(b, "smooth", None)
        if (mine is None) != (smooth is None) or (mine is not None and not mine.equal(smooth)):
            return None
        w = b.weight
        if w.shape[1] != first.weight.shape[1] or w.dtype != first.weight.dtype:
            return None
        if w.device != first.weight.device or (b.bias is None) != (first.bias is None):
            return None
    addresses = tuple(b.weight.data_ptr() for b in bases)
    known = _FUSED.get(first)
    if known is not None and known[1] == addresses:
        return known[0]
    with torch.no_grad():
        weight = torch.cat([b.weight.detach() for b in bases])
        bias = None if first.bias is None else torch.cat([b.bias.detach() for b in bases])
        fused = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
        fused.weight = nn.Parameter(weight, requires_grad=False)
        if bias is not None:
            fused.bias = nn.Parameter(bias, requires_grad=False)
        start = 0
        for b in bases:
            end = start + b.weight.shape[0]
            b.weight.data = weight[start:end]
            if bias is not None:
                b.bias.data = bias[start:end]
            start = end
    made: Any = (
        fused
        if precision is None
        else LowPrecisionLinear(fused, precision, prompts=prompts, smooth=smooth)
    )
    _FUSED[first] = (made, tuple(b.weight.data_ptr() for b in bases))
    return made


def _lora_stack(module: Any, slots: dict[str, int]) -> _Lora | None:
    if getattr(module, "base_layer", None) is None:
        return None
    names = [n for n in module.lora_A if n in slots]
    if not names:
        return None
    ref = module.lora_A[names[0]].weight
    r_max = max(module.lora_A[n].weight.shape[0] for n in names)
    d_in, d_out = ref.shape[1], module.lora_B[names[0]].weight.shape[0]
    a = torch.zeros(len(slots) + 1, r_max, d_in, dtype=ref.dtype, device=ref.device)
    bt = torch.zeros(len(slots) + 1, r_max, d_out, dtype=ref.dtype, device=ref.device)
    scale = torch.zeros(len(slots) + 1, dtype=ref.dtype, device=ref.device)
    with torch.no_grad():
        for n in names:
            s, wa, wb = slots[n], module.lora_A[n].weight, module.lora_B[n].weight
            r = wa.shape[0]
            a[s, :r] = wa
            bt[s, :r] = wb.T
            scale[s] = module.scaling[n]
            # PEFT's forward, merge and unload read the same numbers through these views.
            wa.data = a[s, :r]
            wb.data = bt[s, :r].T
    return _Lora(a, bt, scale, frozenset(slots[n] for n in names))

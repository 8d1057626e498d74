"""Continuous batching: concurrent requests, each with its own adapter, share every decode step.

This scheduler keeps one batch running whose rows use different LoRA adapters (or the base
model). New requests join between steps, after their prompt pass; finished or cancelled rows
leave. On the lean decoder the prompts that arrive together run as one pass (their linears as
one product, attention row by row); on transformers' forward each prompt runs alone.

Two ways to run the steps:
- the lean decoder (`engines/decoder.py`, the default for Llama-shaped models with plain LoRA
  adapters): a KV cache slot per row, per-row LoRA through stacked weights, and the keys and
  values of a recently seen prompt prefix reused instead of recomputed;
- transformers' forward (any other model or adapter kind): PEFT's `adapter_names=[...]` (or the
  gathered-LoRA hooks) over one left-padded cache.
A batch keeps the way it started with; if the adapters change to a kind the lean decoder cannot
run while it decodes, its rows move over to transformers' cache and carry on.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loraflow.engines.base import FinishReason, GenerationParams, GenerationResult
from loraflow.engines.decoder import Chunk, LeanDecoder, PrefixStore, SlotCache
from loraflow.engines.gathered_lora import GatheredLoRA
from loraflow.engines.prompt_grid import LEAN_GRID, LEAN_WAIT_TOKENS, grid_chunks, reusable
from loraflow.engines.sampling import next_tokens
from loraflow.engines.stops import StopFilter
from loraflow.errors import NotFound
from loraflow.hardware import release_cpu_pool

log = logging.getLogger(__name__)

BASE_ADAPTER = "__base__"
# Memory for the keys and values of recent prompts kept for reuse (the lean decoder's).
PREFIX_BYTES = 64 * 1024 * 1024
# The most prompt tokens (rows x the longest chunk) the lean decoder runs in one pass.
PREFILL_TOKENS = 2048


@dataclass
class _Done:
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


@dataclass
class _Row:
    """One request in flight: its tokens, sampling state and the queue its reader waits on."""

    prompt: list[int]
    params: GenerationParams
    adapter: str | None
    events: queue.Queue = field(default_factory=queue.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)
    generated: list[int] = field(default_factory=list)
    sent: str = ""
    error: BaseException | None = None
    done: _Done | None = None
    generator: Any = None
    stops: StopFilter | None = None

    @property
    def position(self) -> int:
        """Position id of the last generated token, the next decode step's input."""
        return len(self.prompt) + len(self.generated) - 1


class TokenStream:
    """Text pieces of one request; usage and finish reason are set once it has ended."""

    def __init__(self, row: _Row) -> None:
        self._row = row
        self.finish_reason: FinishReason | None = None
        self.prompt_tokens = len(row.prompt)
        self.completion_tokens = 0

    def __iter__(self) -> TokenStream:
        return self

    def __next__(self) -> str:
        if self.finish_reason is not None:
            raise StopIteration
        item = self._row.events.get()
        if isinstance(item, str):
            return item
        if isinstance(item, _Done):
            self.finish_reason = item.finish_reason
            self.completion_tokens = item.completion_tokens
            raise StopIteration
        self._row.cancel.set()
        raise item

    def close(self) -> None:
        """Stop generating for this request (the reader went away)."""
        self._row.cancel.set()

    def __del__(self) -> None:
        self._row.cancel.set()


class BatchScheduler:
    """One background thread that decodes every active request together, step by step."""

    def __init__(self, engine: Any, max_batch: int = 16, lean: bool = True) -> None:
        self._engine = engine
        self._max = max(1, max_batch)
        # The lean decoder (None until built, or when it cannot run the model and adapters).
        self._lean_allowed = lean
        self._lean: LeanDecoder | None = None
        # The model and adapter names the decoder was last built for (or found unsupported).
        self._lean_key: tuple[Any, tuple[str, ...]] | None = None
        self._slots: SlotCache | None = None  # the rows' cache while the batch runs lean
        self._prefixes: PrefixStore | None = None
        # Prompt tokens whose keys and values were computed / copied from a saved prefix.
        self.prefill_computed = 0
        self.prefill_reused = 0
        # Lean prompt passes run (several joining rows' chunks make one pass).
        self.prefill_passes = 0
        self._pending: deque[_Row] = deque()
        self._rows: list[_Row] = []
        self._cache: Any = None
        self._mask: Any = None
        self._admitting: list[_Row] = []
        self._gathered: GatheredLoRA | None = None
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="loraflow-batch", daemon=True)
        self._thread.start()

    # --- the reader's side -------------------------------------------------------------
    def stream(self, input_ids: Any, params: GenerationParams, adapter: str | None) -> TokenStream:
        """Queue a request (prompt ids of shape (1, L)); its pieces arrive as it decodes."""
        row = _Row(input_ids[0].tolist(), params, adapter, stops=StopFilter(params.stop))
        if params.seed is not None and not params.greedy:
            import torch

            row.generator = torch.Generator().manual_seed(params.seed)
        with self._wake:
            if self._closed:
                raise RuntimeError("the batch scheduler is closed")
            self._pending.append(row)
            self._wake.notify()
        return TokenStream(row)

    def generate(
        self,
        input_ids: Any,
        params: GenerationParams,
        adapter: str | None,
        on_queued: Callable[[], None] | None = None,
    ) -> GenerationResult:
        """Queue a request (then call `on_queued`) and wait for its whole answer."""
        stream = self.stream(input_ids, params, adapter)
        if on_queued is not None:
            on_queued()
        text = "".join(stream)
        assert stream.finish_reason is not None  # set by the end of iteration
        return GenerationResult(
            text, stream.prompt_tokens, stream.completion_tokens, stream.finish_reason
        )

    def depth(self) -> tuple[int, int]:
        """(rows decoding or being prefilled, requests waiting to join)."""
        with self._wake:
            return len(self._rows) + len(self._admitting), len(self._pending)

    def adapters_in_use(self) -> set[str | None]:
        """Adapters (internal names; None for the base) of every request queued or decoding."""
        # Read without the decode lock: a stale answer keeps an adapter busy one step longer.
        with self._wake:
            rows = [*self._rows, *self._admitting, *self._pending]
        return {r.adapter for r in rows}

    def drop_adapter(self, internal: str) -> None:
        """Fail the requests using an adapter that is being removed; the caller holds the lock."""
        with self._wake:
            waiting = list(self._pending)
        for row in [*self._rows, *waiting]:
            if row.adapter == internal:
                row.error = NotFound("the adapter of this request was unloaded mid-answer")

    def close(self) -> None:
        """Finish the thread; requests still queued get an error."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=30)
        if self._gathered is not None:
            self._gathered.close()
            self._gathered = None

    # --- the decoding thread -----------------------------------------------------------
    def _loop(self) -> None:
        while True:
            if not self._rows:
                # Idle (or about to be): its parallel workers go, so they slow no other
                # thread's torch work (an embedding, a training step) while none decodes here.
                release_cpu_pool()
            with self._wake:
                while not self._closed and not self._pending and not self._rows:
                    self._wake.wait()
                if self._closed:
                    break
            try:
                with self._engine._lock:
                    self._step()
                # An adapter load (or a test) waiting for a gap between steps gets it now.
                self._engine._lock.let_waiters_in()
            except BaseException as exc:  # every reader gets it; the thread keeps serving
                log.exception("batch step failed")
                for row in [*self._rows, *self._admitting]:
                    row.events.put(exc)
                self._rows, self._cache, self._mask, self._slots = [], None, None, None
                self._admitting = []
        for row in [*self._rows, *self._pending]:
            row.events.put(RuntimeError("the engine was shut down"))

    def _step(self) -> None:
        self._evict([r for r in self._rows if r.cancel.is_set() or r.error is not None])
        room = self._max - len(self._rows)
        with self._wake:
            while room > 0 and self._pending:
                self._admitting.append(self._pending.popleft())
                room -= 1
        lean = self._lean_decoder() if self._admitting or self._slots is not None else None
        if self._slots is not None and lean is None:
            self._leave_lean()
        # Lean prompts are run together, each at its own slot; transformers' one at a time.
        together = lean is not None and (self._slots is not None or not self._rows)
        joining: list[_Row] = []
        for row in self._admitting:
            if row.cancel.is_set():
                continue
            if row.error is not None:
                row.events.put(row.error)
                continue
            if together:
                joining.append(row)
                continue
            try:
                self._prefill(row)
            except Exception as exc:  # one bad prompt fails its own request, not the batch
                log.exception("prefill failed")
                row.events.put(exc)
        if joining:
            assert lean is not None
            self._prefill_lean_rows(lean, joining)
        self._admitting = []
        # A row can finish on its first token (EOS, max_new_tokens=1): it leaves before decoding.
        self._evict([r for r in self._rows if r.cancel.is_set()])
        if self._rows and self._slots is not None:
            # The batch runs lean only with a decoder for this step's adapters (the lock is
            # held: they cannot change between the prefills above and this decode).
            assert lean is not None
            self._decode_lean(lean)
        elif self._rows:
            self._decode()

    def _call(self, rows: list[_Row], **kwargs: Any) -> Any:
        import torch

        model = self._engine.model_for_step()
        # Only the last position's logits are used; the LM head is big (49k x 576 here).
        kwargs.update(use_cache=True, logits_to_keep=1)
        if model is self._engine._base:
            with torch.inference_mode():
                return model(**kwargs)
        names = [r.adapter for r in rows]
        gathered = self._gathered_for(model) if len(set(names)) > 1 else None
        with torch.inference_mode():
            if gathered is not None:
                with gathered.rows(names):
                    return model(**kwargs)
            # One adapter for every row (or layers the gathered path cannot run): PEFT's own.
            return model(adapter_names=[n or BASE_ADAPTER for n in names], **kwargs)

    def _gathered_for(self, model: Any) -> GatheredLoRA | None:
        """The gathered-LoRA runner for the attached adapters, rebuilt when they change."""
        if self._gathered is not None and self._gathered.current(model):
            return self._gathered if self._gathered.supported else None
        if self._gathered is not None:
            self._gathered.close()
        self._gathered = GatheredLoRA(model)
        return self._gathered if self._gathered.supported else None

    def _prefill(self, row: _Row) -> None:
        import torch

        ids = torch.tensor([row.prompt], device=self._engine._base.device)
        out = self._call([row], input_ids=ids, attention_mask=torch.ones_like(ids))
        token = next_tokens(out.logits[:, -1, :], [row])[0]
        self._join(row, out.past_key_values, len(row.prompt))
        self._accept(row, token)

    def _decode(self) -> None:
        import torch

        rows = list(self._rows)
        device = self._mask.device
        ids = torch.tensor([[r.generated[-1]] for r in rows], device=device)
        positions = torch.tensor([[r.position] for r in rows], device=device)
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(rows), 1))], dim=1)
        out = self._call(
            rows,
            input_ids=ids,
            attention_mask=self._mask,
            position_ids=positions,
            past_key_values=self._cache,
        )
        for row, token in zip(rows, next_tokens(out.logits[:, -1, :], rows), strict=True):
            self._accept(row, token)
        self._evict([r for r in rows if r.cancel.is_set()])

    # --- the lean decoder --------------------------------------------------------------
    def _lean_decoder(self) -> LeanDecoder | None:
        """The lean decoder for the model and adapters attached now (rebuilt on change)."""
        if not self._lean_allowed or self._engine.device != "cpu":
            return None
        model = self._engine.model_for_step()
        key = (model, _adapter_names(model))
        if self._lean_key == key:  # modules compare by identity
            return self._lean  # built for these adapters, or found unable to run them
        self._lean = None  # the old stacks go before the new ones are made
        self._lean = LeanDecoder.build(model, self._engine._base)
        # PEFT's separate LoRA tensors were just freed (they are views into the stacks now):
        # hand the freed heap back, or 32 adapters' worth of it stays resident.
        release_heap()
        self._lean_key = key
        if self._lean is not None and self._prefixes is None:
            per_token = self._lean.cache_bytes_per_token()
            self._prefixes = PrefixStore(budget=max(64, PREFIX_BYTES // per_token))
        if self._prefixes is not None:
            # Saved prefixes of adapters that are gone (or reloaded under a new name) are useless.
            self._prefixes.keep(set(self._lean.slots) if self._lean is not None else set())
        return self._lean

    def _slot_of(self, lean: LeanDecoder, row: _Row) -> int:
        return 0 if row.adapter is None else lean.slots[row.adapter]

    def _slot_cache(self, lean: LeanDecoder) -> SlotCache:
        if self._slots is None:
            self._slots = SlotCache(
                len(lean.layers),
                lean.kv_heads,
                lean.head_dim,
                lean.dtype,
                lean.device,
                max_rows=self._max,
            )
        return self._slots

    def _prefill_lean_rows(self, lean: LeanDecoder, rows: list[_Row]) -> None:
        """Prefill the joining rows' prompts in passes of several rows; they join the batch.

        A row whose prompt shares a reusable prefix with another joining row's (a long
        system prompt or RAG preamble) waits for the next step, when that prefix is saved, so
        it is computed once. If a pass fails, the rows are prefilled one by one instead: a
        bad prompt fails its own request only.
        """
        plans: list[tuple[_Row, int, list[tuple[int, int]]]] = []
        later: list[_Row] = []
        joined: list[_Row] = []
        try:
            slots = self._slot_cache(lean)
            assert self._prefixes is not None
            try:
                for row in rows:
                    shared, saved = self._prefixes.lookup(row.adapter, row.prompt)
                    if any(_would_share(row, other, shared) for other, _, _ in plans):
                        later.append(row)
                        continue
                    slot = len(self._rows) + len(plans)
                    slots.ensure(slot + 1, len(row.prompt))
                    if saved is not None:
                        slots.put(slot, saved, shared)
                    chunks = list(grid_chunks(shared, len(row.prompt), LEAN_GRID))
                    plans.append((row, shared, chunks))
            finally:
                if later:
                    with self._wake:
                        self._pending.extendleft(reversed(later))
            last = self._run_chunks(lean, slots, plans)
            for (row, shared, _), logits in zip(plans, last, strict=True):
                self.prefill_reused += shared
                self.prefill_computed += len(row.prompt) - shared
                self._prefixes.save(row.adapter, row.prompt, slots, len(self._rows))
                self._rows.append(row)
                joined.append(row)
                self._accept(row, next_tokens(logits.unsqueeze(0), [row])[0])
        except Exception:
            log.exception("prefill of %d prompts together failed; one by one", len(plans))
            done = {id(r) for r in (*later, *joined)}
            for row in rows:
                if id(row) in done:
                    continue
                try:
                    self._prefill_lean(lean, row)
                except Exception as exc:  # one bad prompt fails its own request, not the batch
                    log.exception("prefill failed")
                    row.events.put(exc)

    def _run_chunks(
        self,
        lean: LeanDecoder,
        slots: SlotCache,
        plans: list[tuple[_Row, int, list[tuple[int, int]]]],
    ) -> list[Any]:
        """Each planned row's chunks in order, the rows' k-th chunks in passes of at most
        PREFILL_TOKENS padded tokens; every row's last logits."""
        last: list[Any] = [None] * len(plans)
        first_slot = len(self._rows)
        for k in range(max(len(chunks) for _, _, chunks in plans)):
            todo = [
                (i, Chunk(first_slot + i, row.prompt[c[k][0] : c[k][1]], c[k][0],
                          self._slot_of(lean, row)))
                for i, (row, _, c) in enumerate(plans)
                if k < len(c)
            ]  # fmt: skip
            while todo:
                take = 1
                while take < len(todo):
                    widest = max(len(ch.ids) for _, ch in todo[: take + 1])
                    if widest * (take + 1) > PREFILL_TOKENS:
                        break
                    take += 1
                part, todo = todo[:take], todo[take:]
                logits = lean.prefill_many(slots, [ch for _, ch in part])
                self.prefill_passes += 1
                for j, (i, _) in enumerate(part):
                    last[i] = logits[j]
        return last

    def _prefill_lean(self, lean: LeanDecoder, row: _Row) -> None:
        self._slot_cache(lean)
        assert self._slots is not None and self._prefixes is not None
        slot, adapter = len(self._rows), self._slot_of(lean, row)
        shared, saved = self._prefixes.lookup(row.adapter, row.prompt)
        self._slots.ensure(slot + 1, len(row.prompt))
        if saved is not None:
            self._slots.put(slot, saved, shared)
        # Chunks on the fixed grid: each position is computed the same way whether or not
        # a prefix was reused, so reuse never changes an answer.
        for a, b in grid_chunks(shared, len(row.prompt), LEAN_GRID):
            logits = lean.prefill(self._slots, slot, row.prompt[a:b], a, adapter)
            self.prefill_passes += 1
        self.prefill_reused += shared
        self.prefill_computed += len(row.prompt) - shared
        self._prefixes.save(row.adapter, row.prompt, self._slots, slot)
        self._rows.append(row)
        self._accept(row, next_tokens(logits.unsqueeze(0), [row])[0])

    def _decode_lean(self, lean: LeanDecoder) -> None:
        assert self._slots is not None
        rows = list(self._rows)
        logits = lean.decode(
            self._slots,
            [r.generated[-1] for r in rows],
            [r.position for r in rows],
            [self._slot_of(lean, r) for r in rows],
        )
        for row, token in zip(rows, next_tokens(logits, rows), strict=True):
            self._accept(row, token)
        self._evict([r for r in rows if r.cancel.is_set()])

    def _leave_lean(self) -> None:
        """Hand the rows' keys and values to a transformers cache (left-padded) and go on there."""
        assert self._slots is not None
        slots, self._slots = self._slots, None
        if not self._rows:
            return
        import torch
        from transformers import DynamicCache

        lengths = [r.position for r in self._rows]
        width = max(lengths)
        cache = DynamicCache()
        for i, (k, v) in enumerate(zip(slots.k, slots.v, strict=True)):
            keys = k.new_zeros((len(self._rows), k.shape[1], width, k.shape[3]))
            values = torch.zeros_like(keys)
            for j, n in enumerate(lengths):
                keys[j, :, width - n :] = k[j, :, :n]
                values[j, :, width - n :] = v[j, :, :n]
            cache.update(keys, values, i)
        mask = keys.new_zeros((len(self._rows), width), dtype=torch.long)
        for j, n in enumerate(lengths):
            mask[j, width - n :] = 1
        self._cache, self._mask = cache, mask

    def _accept(self, row: _Row, token: int) -> None:
        """Record one new token; emit text; finish the row on EOS, a stop string or the limit."""
        row.generated.append(token)
        finish: FinishReason | None = None
        if token in self._engine.eos_ids() and not row.params.ignore_eos:
            finish = "stop"
        else:
            text = self._engine.tokenizer.decode(row.generated, skip_special_tokens=True)
            # A multi-byte character split across tokens decodes as U+FFFD until complete.
            if not text.endswith("\ufffd"):
                piece = text[len(row.sent) :]
                row.sent = text
                out = row.stops.feed(piece) if row.stops else piece
                if out:
                    row.events.put(out)
                if row.stops and row.stops.stopped:
                    finish = "stop"
        if finish is None and len(row.generated) >= row.params.max_new_tokens:
            finish = "length"
        if finish is None:
            return
        if row.stops and not row.stops.stopped:
            tail = row.stops.flush()
            if tail:
                row.events.put(tail)
        # Sent once the row has left the batch, so a finished reader never sees it counted.
        row.done = _Done(finish, len(row.prompt), len(row.generated))
        row.cancel.set()

    # --- the shared KV cache -----------------------------------------------------------
    def _join(self, row: _Row, cache: Any, length: int) -> None:
        """Add a prefilled row's cache to the batch, left-padding whichever side is shorter."""
        import torch

        mask = torch.ones((1, length), dtype=torch.long, device=self._engine._base.device)
        if self._cache is None:
            self._cache, self._mask, self._rows = cache, mask, [row]
            return
        width = self._mask.shape[1]
        pad_old, pad_new = max(0, length - width), max(0, width - length)
        for mine, theirs in zip(self._cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([_pad(mine.keys, pad_old), _pad(theirs.keys, pad_new)])
            mine.values = torch.cat([_pad(mine.values, pad_old), _pad(theirs.values, pad_new)])
        self._mask = torch.cat([_pad_mask(self._mask, pad_old), _pad_mask(mask, pad_new)])
        self._rows.append(row)

    def _evict(self, gone: list[_Row]) -> None:
        """Drop finished rows from the batch and trim columns that only padding uses now."""
        if not gone:
            return
        keep = [i for i, r in enumerate(self._rows) if r not in gone]
        if not keep:
            self._rows, self._cache, self._mask, self._slots = [], None, None, None
            _notify(gone)
            return
        if self._slots is not None:
            # Rows keep their order; each moves down into the first free slot.
            for new, old in enumerate(keep):
                if new != old:
                    self._slots.move(old, new, self._rows[old].position)
            self._rows = [self._rows[i] for i in keep]
            _notify(gone)
            return
        import torch

        index = torch.tensor(keep, device=self._mask.device)
        mask = self._mask.index_select(0, index)
        start = int(mask.any(dim=0).long().argmax())
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]
        self._mask = mask[:, start:]
        self._rows = [self._rows[i] for i in keep]
        _notify(gone)


def release_heap() -> None:
    """Return freed heap memory to the system (glibc's malloc_trim; elsewhere nothing)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _adapter_names(model: Any) -> tuple[str, ...]:
    return tuple(sorted(getattr(model, "peft_config", {}) or {}))


def _notify(gone: list[_Row]) -> None:
    """Tell the readers of rows that left: their end, or the error that removed them."""
    for row in gone:
        if row.done is not None:
            row.events.put(row.done)
        elif row.error is not None:
            row.events.put(row.error)
        row.cancel.set()


def _pad(t: Any, n: int) -> Any:
    """Left-pad a (B, H, T, D) cache tensor with n zero positions."""
    if n == 0:
        return t
    import torch

    return torch.cat([t.new_zeros((*t.shape[:2], n, t.shape[3])), t], dim=2)


def _pad_mask(m: Any, n: int) -> Any:
    if n == 0:
        return m
    import torch

    return torch.cat([m.new_zeros((m.shape[0], n)), m], dim=1)


def _would_share(row: _Row, other: _Row, shared: int) -> bool:
    """Whether `row` should wait for `other`'s prompt (same adapter): it could reuse more of
    it than `shared` tokens, and at least LEAN_WAIT_TOKENS."""
    if row.adapter != other.adapter:
        return False
    n = reusable(other.prompt, row.prompt, LEAN_GRID)
    return n > shared and n >= LEAN_WAIT_TOKENS

"""The llama.cpp local engine: a GGUF base model on the CPU, one LoRA adapter per request.

Faster than the transformers engine at batch 1 on a CPU, but slower where the transformers
engine batches: one context serves one request at a time, so concurrent requests (for the same
or different adapters) are serialised rather than decoded together.

Prompts are evaluated in chunks whose boundaries are fixed positions (16, 32, 48, 64, 128,
256, 512, then every 512 tokens), and a request reuses the KV cache of the previous request's
prompt up to the last such boundary they share, when both used the same adapter. Reusing a
prefix at arbitrary positions would change llama.cpp's numbers (a prefix evaluated inside a
longer chunk is not bit-identical to one evaluated alone) enough to change greedy answers;
on the fixed grid every position is always computed in the same chunk, so an answer never
depends on which request came before. A PEFT adapter is converted to GGUF on first use
(seconds; cached by its checksum).
"""

from __future__ import annotations

import codecs
import secrets
import threading
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraflow.engines.base import EngineHealth, FinishReason, GenerationParams, GenerationResult
from loraflow.engines.chat import check_messages, render_prompt
from loraflow.engines.llamacpp_lora import GGUFLoraCache, free_adapter, init_adapter, set_adapter
from loraflow.engines.prompt_grid import grid_chunks, grid_floor, reusable
from loraflow.engines.stops import StopFilter
from loraflow.errors import InvalidInput, NotFound
from loraflow.models.adapters import check_adapter_folder


@dataclass
class _Adapter:
    folder: Path
    gguf: Path
    handle: Any


class ChatTemplate:
    """A GGUF's chat template with the tokenizer methods engines/chat.render_prompt uses."""

    def __init__(self, template: str | None, bos: str, eos: str) -> None:
        self.chat_template = template
        self._formatter: Any = None
        if template:
            # llama-cpp-python's own renderer: sandboxed Jinja with transformers' conventions.
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            self._formatter = Jinja2ChatFormatter(template, eos, bos)

    def apply_chat_template(self, messages: list[dict[str, str]], **_: Any) -> str:
        """The prompt text, ending where the assistant's answer begins."""
        return self._formatter(messages=messages).prompt


class LlamaStream:
    """Text pieces of one answer; the finish reason and exact token count once it ends."""

    def __init__(self, pieces: Iterator[str], prompt_tokens: int) -> None:
        self._pieces = pieces
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.finish_reason: FinishReason | None = None

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        """Stop generating and free the engine for the next request."""
        close = getattr(self._pieces, "close", None)
        if close is not None:
            close()


class LlamaCppEngine:
    """Generate with llama-cpp-python on a GGUF model, applying one LoRA adapter per request."""

    # Requests run one at a time through one context; there is no batch to join.
    batching = False
    device = "cpu"

    def __init__(
        self,
        llm: Any,
        *,
        base_model_name: str,
        lora_cache: GGUFLoraCache | None = None,
        chat_template: str | None = None,
        name: str = "local",
    ) -> None:
        import llama_cpp

        self.name = name
        self.base_model_name = base_model_name
        self._llama_cpp = llama_cpp
        self._llm = llm
        self._vocab = llama_cpp.llama_model_get_vocab(llm.model)
        self._lora = lora_cache
        self._adapters: dict[str, _Adapter] = {}
        self._active: Any = None  # the adapter handle set on the context now
        # The prompt whose KV cache the context holds (on the chunk grid), and its adapter.
        self._kv_prompt: list[int] = []
        self._kv_adapter: Any = None
        self.prompt_tokens_reused = 0  # prompt tokens taken from the cache instead of evaluated
        # Recurrent and hybrid models (Mamba, Jamba...) cannot drop part of their state: no reuse.
        self._can_reuse = not any(
            bool(getattr(llama_cpp, check, lambda _m: False)(llm.model))
            for check in ("llama_model_is_recurrent", "llama_model_is_hybrid")
        )
        # Adapters of the requests waiting for the context or generating (None: base model).
        self._in_use: Counter[str | None] = Counter()
        # Told the adapter name when a request with an adapter reaches the engine.
        self.on_request: Callable[[str], None] | None = None
        # One llama.cpp context holds one sequence: generations, adapter switches and
        # unloads take turns.
        self._lock = threading.Lock()
        self._waiting = 0
        self._running = 0
        self._count_lock = threading.Lock()  # guards _waiting, updated outside the engine lock
        # Frees llama.cpp's memory at interpreter exit too, while its library is still loaded
        # (llama-cpp-python's own destructor raises when it runs during module teardown).
        self._finalizer = weakref.finalize(self, llm.close)
        bos, eos = (self._token_text(t) for t in (llm.token_bos(), llm.token_eos()))
        template = llm.metadata.get("tokenizer.chat_template") or chat_template
        self.template = ChatTemplate(template, bos, eos)

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self._llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    # --- adapters ----------------------------------------------------------------------------
    def adapters(self) -> list[str]:
        """Names of the loaded adapters, in the order they were loaded."""
        return list(self._adapters)

    def adapter_paths(self) -> dict[str, Path]:
        """Loaded adapters and the PEFT folders they were converted from."""
        return {name: a.folder for name, a in self._adapters.items()}

    def load_adapter(self, name: str, path: Path, *, replace: bool = False) -> None:
        """Load the PEFT adapter in `path` under `name` (as a cached GGUF); `replace` swaps it."""
        if not name or not name.strip():
            raise InvalidInput(f"adapter name {name!r} is empty")
        check_adapter_folder(path)
        if name in self._adapters and not replace:
            raise self._taken(name)
        if self._lora is None:
            raise InvalidInput(
                f"adapter {name!r} cannot be converted for llama.cpp: the base model "
                f"{self.base_model_name!r} has no safetensors folder (config.json) beside its "
                f".gguf, which the conversion reads shapes from",
                hint="put the model's Hugging Face folder next to the .gguf file",
            )
        gguf = self._lora.path_for(Path(path))  # seconds on first use, outside the lock
        with self._lock:
            old = self._adapters.get(name)
            if old is not None and not replace:
                raise self._taken(name)
            handle = init_adapter(self._llama_cpp, self._llm.model, gguf, name)
            self._adapters[name] = _Adapter(Path(path), gguf, handle)
            if old is not None:
                self._release(old.handle)

    def unload_adapter(self, name: str) -> None:
        """Unload adapter `name` once the request using the engine now has finished."""
        with self._lock:
            if name not in self._adapters:
                raise self._unknown(name)
            self._release(self._adapters.pop(name).handle)

    def _release(self, handle: Any) -> None:
        """Free an adapter, taking it off the context first; the caller holds the lock."""
        if self._active is handle:
            self._use(None)
        if self._kv_adapter is handle:
            self._kv_prompt = []
        free_adapter(self._llama_cpp, handle)

    def _use(self, handle: Any) -> None:
        """Apply adapter `handle` (None: base model); the caller holds the lock."""
        if handle is self._active:
            return
        set_adapter(self._llama_cpp, self._llm.ctx, handle)
        self._active = handle

    def _handle(self, adapter: str | None) -> Any:
        if adapter is None:
            return None
        if adapter not in self._adapters:
            raise self._unknown(adapter)
        return self._adapters[adapter].handle

    # --- generation --------------------------------------------------------------------------
    def health(self) -> EngineHealth:
        """Always ok once constructed: the model is in memory."""
        return EngineHealth(
            True,
            f"{self.base_model_name} on llama.cpp ({self._llm.n_ctx()} tokens of context) "
            f"with {len(self._adapters)} adapter(s)",
        )

    def adapters_in_use(self) -> set[str]:
        """Loaded adapters that a request waiting for the context or generating uses."""
        with self._count_lock:
            return {a for a in self._in_use if a is not None and a in self._adapters}

    def queue_depth(self) -> tuple[int, int]:
        """(requests generating now, requests waiting for the context)."""
        return self._running, self._waiting

    def close(self) -> None:
        """Free the model, its context and every adapter."""
        with self._lock:
            self._adapters.clear()
            self._active = None
            self._kv_prompt = []
            self._finalizer()

    def count_tokens(self, text: str) -> int:
        """How many tokens `text` takes for this model."""
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def eos_ids(self) -> set[int]:
        """Token ids that end an answer (end-of-generation tokens)."""
        eog = self._llama_cpp.llama_vocab_is_eog
        return {t for t in range(self._llm.n_vocab()) if eog(self._vocab, t)}

    def generate(
        self, messages: list[dict[str, str]], params: GenerationParams, adapter: str | None = None
    ) -> GenerationResult:
        """Answer `messages` in one piece, with `adapter` or the base model (None)."""
        return _collect(self.stream(messages, params, adapter))

    def generate_text(
        self, prompt: str, params: GenerationParams, adapter: str | None = None
    ) -> GenerationResult:
        """Continue the raw `prompt` (no chat template), with `adapter` or the base model."""
        return _collect(self.stream_text(prompt, params, adapter))

    def stream(
        self, messages: list[dict[str, str]], params: GenerationParams, adapter: str | None = None
    ) -> LlamaStream:
        """Answer `messages` as text pieces; bad input raises here, before the first piece."""
        params.validate()
        check_messages(messages)
        self._handle(adapter)  # an unknown adapter fails here, before the first piece
        return self._open(self._chat_ids(messages), params, adapter)

    def _chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        prompt = render_prompt(self.template, messages)
        # A chat template writes BOS and friends itself; special tokens in it are tokens.
        templated = bool(self.template.chat_template)
        return list(self._llm.tokenize(prompt.encode("utf-8"), add_bos=not templated, special=True))

    def stream_text(
        self, prompt: str, params: GenerationParams, adapter: str | None = None
    ) -> LlamaStream:
        """Continue the raw `prompt` as text pieces; bad input raises before the first piece."""
        params.validate()
        if not isinstance(prompt, str) or not prompt:
            raise InvalidInput("prompt must be a non-empty string")
        self._handle(adapter)
        return self._open(self._llm.tokenize(prompt.encode("utf-8"), add_bos=True), params, adapter)

    def _open(self, ids: list[int], params: GenerationParams, adapter: str | None) -> LlamaStream:
        limit = self._llm.n_ctx()
        if len(ids) >= limit:
            raise InvalidInput(
                f"the prompt has {len(ids)} tokens; the model's context holds {limit}",
                hint="shorten the messages or the retrieved context",
            )
        out = LlamaStream(iter(()), len(ids))
        out._pieces = self._pieces(ids, params, adapter, out)
        return out

    def _pieces(
        self, ids: list[int], params: GenerationParams, adapter: str | None, out: LlamaStream
    ) -> Iterator[str]:
        """Decode under the engine lock, yielding text that is safe to show."""
        with self._count_lock:
            self._waiting += 1
            self._in_use[adapter] += 1
        if adapter is not None and self.on_request is not None:
            self.on_request(adapter)  # counted in adapters_in_use() from here on
        try:
            yield from self._locked_pieces(ids, params, adapter, out)
        finally:
            with self._count_lock:
                self._in_use[adapter] -= 1
                if self._in_use[adapter] <= 0:
                    del self._in_use[adapter]

    def _locked_pieces(
        self, ids: list[int], params: GenerationParams, adapter: str | None, out: LlamaStream
    ) -> Iterator[str]:
        llm = self._llm
        with self._lock:
            with self._count_lock:
                self._waiting -= 1
            self._running = 1
            try:
                # Looked up under the lock: an unload or replace while this request waited
                # frees the old handle, and llama.cpp must never be given a freed one.
                handle = self._handle(adapter)
                self._use(handle)
                self._evaluate_prompt(ids, handle)
                llm.set_seed(secrets.randbits(31) if params.seed is None else params.seed)
                # The whole prompt is evaluated: generate() finds it cached and samples at once.
                tokens = llm.generate(
                    ids,
                    top_k=params.top_k,
                    top_p=params.top_p,
                    min_p=0.0,  # llama-cpp-python's default 0.05 would differ from transformers
                    temp=params.temperature,
                    repeat_penalty=params.repetition_penalty,
                )
                yield from self._decode(tokens, params, out)
            finally:
                self._running = 0

    def _evaluate_prompt(self, ids: list[int], handle: Any) -> None:
        """Evaluate `ids` on the chunk grid, reusing the previous prompt's cache where it can.

        The caller holds the lock. At least the last chunk is always evaluated, so the logits
        sampled next are this prompt's.
        """
        llm = self._llm
        keep = self._reusable(ids, handle)
        self._kv_prompt = []  # until the evaluation below completes
        if keep == 0:
            llm.reset()
        else:
            llm.n_tokens = keep  # eval() drops the cache past this position
            self.prompt_tokens_reused += keep
        for a, b in grid_chunks(keep, len(ids)):
            llm.eval(ids[a:b])
        self._kv_prompt, self._kv_adapter = list(ids), handle

    def _reusable(self, ids: list[int], handle: Any) -> int:
        """Leading tokens of `ids` the cache holds from the previous prompt (grid-aligned)."""
        cached = self._kv_prompt
        if not (self._can_reuse and cached and self._kv_adapter is handle):
            return 0
        # Short of the previous prompt's last token, which some llama-cpp-python versions
        # evaluate again on its own inside generate().
        return min(reusable(cached, ids), grid_floor(len(cached) - 1))

    def prompt_work(self, first: list[dict[str, str]] | str, adapter: str | None) -> int:
        """Prompt tokens a request for `first` (chat messages, or a raw prompt) would evaluate
        if it ran now: its length less what the previous prompt's cache gives it. A routing
        estimate, read without waiting for a request in progress."""
        if isinstance(first, str):
            ids = list(self._llm.tokenize(first.encode("utf-8"), add_bos=True))
        else:
            ids = self._chat_ids(first)
        entry = self._adapters.get(adapter) if adapter is not None else None
        return len(ids) - self._reusable(ids, None if entry is None else entry.handle)

    def _decode(self, tokens: Any, params: GenerationParams, out: LlamaStream) -> Iterator[str]:
        llm, is_eog, vocab = self._llm, self._llama_cpp.llama_vocab_is_eog, self._vocab
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = StopFilter(params.stop)
        finish: FinishReason = "length"
        try:
            for token in tokens:
                out.completion_tokens += 1
                if not params.ignore_eos and is_eog(vocab, token):
                    finish = "stop"
                    break
                text = stops.feed(utf8.decode(llm.detokenize([token])))
                if text:
                    yield text
                if stops.stopped:
                    finish = "stop"
                    break
                # The next step would evaluate this token: stop when the context is full.
                if out.completion_tokens >= params.max_new_tokens or llm.n_tokens >= llm.n_ctx():
                    break
        finally:
            tokens.close()
        tail = stops.feed(utf8.decode(b"", final=True)) + stops.flush()
        if tail:
            yield tail
        out.finish_reason = finish

    def logits_finite(self, text: str, adapter: str | None = None) -> bool:
        """Whether one forward pass over `text` gives finite logits (a deployment check)."""
        import numpy as np

        handle = self._handle(adapter)
        ids = self._llm.tokenize(text.encode("utf-8"), add_bos=True)
        with self._lock:
            self._use(handle)
            self._kv_prompt = []
            self._llm.reset()
            self._llm.eval(ids)
            logits = self._llama_cpp.llama_get_logits(self._llm.ctx)
            row = np.ctypeslib.as_array(logits, shape=(self._llm.n_vocab(),))
            return bool(np.isfinite(row).all())

    def _taken(self, name: str) -> InvalidInput:
        return InvalidInput(
            f"an adapter named {name!r} is already loaded from {self._adapters[name].folder}; "
            f"unload it first or pick another name"
        )

    def _unknown(self, name: str) -> NotFound:
        known = ", ".join(repr(n) for n in self._adapters) or "none"
        return NotFound(f"adapter {name!r} is not loaded; loaded adapters: {known}")


def _collect(stream: LlamaStream) -> GenerationResult:
    text = "".join(stream)
    finish: FinishReason = stream.finish_reason or "stop"
    return GenerationResult(text, stream.prompt_tokens, stream.completion_tokens, finish)

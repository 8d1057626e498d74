"""LOCAL_ENGINE=hybrid: llama.cpp answers a lone request, concurrent ones batch in transformers.

At batch 1 a CPU reads every weight once a token, so llama.cpp's 4-bit GGUF (~85 MB for
SmolLM2-135M) answers ~5x faster than fp32 transformers (~540 MB a token); with many requests
at once, the transformers engine's continuous batch of mixed adapters is the faster one
(docs/BENCHMARKS.md). This engine holds both on the same base model and adapters: a request
that arrives while neither is busy goes to llama.cpp; one that arrives while anything runs
joins the batch. An adapter llama.cpp cannot take (a target module it does not map) is served
by the batch alone.

Long prompts are the exception: llama.cpp evaluates a prompt at about its decoding speed on a
CPU (~140 tokens/s for SmolLM2 on a 2-core AVX2 host, where the transformers engine's matrix
products ran ~500), so a lone request with more than `solo_prompt_tokens` prompt tokens to
evaluate (llama.cpp's reusable cache counted) goes to the batch too: a RAG answer's 841-token
prompt came at 3.2-3.6 s to the first token on llama.cpp, ~1.6 s on transformers.

The two paths compute in different precisions, so a greedy answer may differ between a lone
request and the same request under load (on SmolLM2 the GGUF's perplexity on a held-out text
was 0.999x fp32's, 94% of greedy tokens equal); LOCAL_ENGINE=transformers answers every request
the same way.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from pathlib import Path
from typing import Any, cast

from loraflow.engines.base import EngineHealth, GenerationParams, GenerationResult, LocalEngine
from loraflow.errors import LoraflowError
from loraflow.hardware import release_cpu_pool

log = logging.getLogger(__name__)

# Set (see `batch_only`): requests made in this context go to the batch even when alone.
_BATCH_ONLY: ContextVar[bool] = ContextVar("loraflow_hybrid_batch_only", default=False)


@contextlib.contextmanager
def batch_only() -> Iterator[None]:
    """Requests made inside go to the transformers batch whatever the hybrid engine's load:
    for answers that are compared with each other (side-by-side answers, an adapter's
    benchmark against the base), which must not come from two precisions."""
    token = _BATCH_ONLY.set(True)
    try:
        yield
    finally:
        _BATCH_ONLY.reset(token)


class _SoloStream:
    """A llama.cpp stream that frees the solo path when it ends or is closed."""

    def __init__(self, inner: Any, done: Callable[[], None]) -> None:
        self._inner = inner
        self._done: Callable[[], None] | None = done

    def __iter__(self) -> _SoloStream:
        return self

    def __next__(self) -> str:
        try:
            piece = str(next(self._inner))
        except BaseException:
            self._finish()
            raise
        # Each piece may be asked for on another server thread, and llama.cpp runs its step
        # on the asking one: that thread keeps no OpenMP workers (~2% of a step here).
        release_cpu_pool()
        return piece

    def __getattr__(self, name: str) -> Any:
        # finish_reason, prompt_tokens, completion_tokens... of the llama.cpp stream.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._inner, name)

    def close(self) -> None:
        try:
            close = getattr(self._inner, "close", None)
            if close is not None:
                close()  # ends llama.cpp's generator: its lock is free again
        finally:
            self._finish()

    def _finish(self) -> None:
        done, self._done = self._done, None
        if done is not None:
            done()

    def __del__(self) -> None:
        if getattr(self, "_done", None) is not None:
            self.close()


class HybridEngine:
    """The transformers engine (`batch`, continuous batching) and llama.cpp (`solo`) as one."""

    def __init__(
        self, batch: LocalEngine, solo: LocalEngine, solo_prompt_tokens: int = 128
    ) -> None:
        self.batch, self.solo = batch, solo
        self.solo_prompt_tokens = solo_prompt_tokens
        self.name = batch.name
        self.base_model_name: str = getattr(batch, "base_model_name", "")
        # Reentrant: a stream's finaliser may run (garbage collection) while this is held.
        self._lock = threading.RLock()
        self._solo_busy = False
        # Adapters llama.cpp holds the current version of; the others go to the batch.
        self._solo_adapters = set(solo.adapters()) & set(batch.adapters())
        # llama.cpp's adapter loads (a GGUF conversion: seconds) and unloads wait for its
        # answer in progress; they run here, in order, so attaching never waits for them.
        self._solo_ops = ThreadPoolExecutor(1, thread_name_prefix="loraflow-hybrid")
        self._latest: dict[str, int] = {}
        self._ops = 0
        self.served = {"solo": 0, "batch": 0, "long_prompts": 0}

    # --- routing -----------------------------------------------------------------------
    def _short(self, first: Any, adapter: str | None) -> bool:
        """Whether llama.cpp has at most `solo_prompt_tokens` of `first`'s prompt to evaluate."""
        try:
            work = int(cast(Any, self.solo).prompt_work(first, adapter))
        except Exception:  # noqa: BLE001 - bad input: llama.cpp's own checks answer it
            return True
        return work <= self.solo_prompt_tokens

    def _solo_takes(self, adapter: str | None) -> bool:
        return not self._solo_busy and (adapter is None or adapter in self._solo_adapters)

    def _claim_solo(self, first: Any, adapter: str | None) -> bool:
        with self._lock:
            lone = not _BATCH_ONLY.get() and self._solo_takes(adapter)
        lone = lone and self.batch.queue_depth() == (0, 0)
        # Tokenizing takes ~1 ms for a long prompt: only for a request llama.cpp could take.
        short = lone and self._short(first, adapter)
        with self._lock:
            free = short and self._solo_takes(adapter)
            if free:
                self._solo_busy = True
            self.served["solo" if free else "batch"] += 1
            if lone and not short:
                self.served["long_prompts"] += 1
            return free

    def _solo_done(self) -> None:
        with self._lock:
            self._solo_busy = False
        # llama.cpp ran its parallel work on this thread: its workers go with the request.
        release_cpu_pool()

    def _whole(self, method: str, first: Any, params: GenerationParams, adapter: str | None) -> Any:
        """`method` (generate, generate_text) of whichever engine takes this request."""
        if not self._claim_solo(first, adapter):
            return getattr(self.batch, method)(first, params, adapter)
        try:
            return getattr(self.solo, method)(first, params, adapter)
        finally:
            self._solo_done()

    def _pieces(
        self, method: str, first: Any, params: GenerationParams, adapter: str | None
    ) -> Any:
        """`method` (stream, stream_text) of whichever engine takes this request."""
        if not self._claim_solo(first, adapter):
            return getattr(self.batch, method)(first, params, adapter)
        try:
            inner = getattr(self.solo, method)(first, params, adapter)
        except BaseException:
            self._solo_done()
            raise
        return _SoloStream(inner, self._solo_done)

    def generate(
        self, messages: list[dict[str, str]], params: GenerationParams, adapter: str | None = None
    ) -> GenerationResult:
        return cast(GenerationResult, self._whole("generate", messages, params, adapter))

    def stream(
        self, messages: list[dict[str, str]], params: GenerationParams, adapter: str | None = None
    ) -> Iterator[str]:
        return cast(Iterator[str], self._pieces("stream", messages, params, adapter))

    def generate_text(
        self, prompt: str, params: GenerationParams, adapter: str | None = None
    ) -> GenerationResult:
        return cast(GenerationResult, self._whole("generate_text", prompt, params, adapter))

    def stream_text(
        self, prompt: str, params: GenerationParams, adapter: str | None = None
    ) -> Iterator[str]:
        return cast(Iterator[str], self._pieces("stream_text", prompt, params, adapter))

    # --- adapters ----------------------------------------------------------------------
    def _next_op(self, name: str) -> int:
        with self._lock:
            self._ops += 1
            self._latest[name] = self._ops
            return self._ops

    def load_adapter(self, name: str, path: Path, *, replace: bool = False) -> None:
        with self._lock:
            # Until llama.cpp holds this version too, its requests batch.
            had = name in self._solo_adapters
            self._solo_adapters.discard(name)
        try:
            self.batch.load_adapter(name, path, replace=replace)
        except BaseException:
            if had:  # refused: both engines keep what they had
                with self._lock:
                    self._solo_adapters.add(name)
            raise
        op = self._next_op(name)
        self._solo_ops.submit(self._solo_load, name, path, op)

    def _solo_load(self, name: str, path: Path, op: int) -> None:
        try:
            self.solo.load_adapter(name, path, replace=name in self.solo.adapters())
        except Exception as exc:  # noqa: BLE001 - any failure leaves it to the batch
            log.warning("adapter %r is served by the batch only (llama.cpp: %s)", name, exc)
            with contextlib.suppress(Exception):
                self.solo.unload_adapter(name)  # an older version must not answer
            return
        finally:
            release_cpu_pool()  # the conversion ran torch ops on this thread
        with self._lock:
            if self._latest.get(name) == op:  # not unloaded or replaced since
                self._solo_adapters.add(name)

    def unload_adapter(self, name: str) -> None:
        with self._lock:
            self._solo_adapters.discard(name)
        self.batch.unload_adapter(name)
        self._next_op(name)
        self._solo_ops.submit(self._solo_unload, name)

    def _solo_unload(self, name: str) -> None:
        with contextlib.suppress(LoraflowError):
            self.solo.unload_adapter(name)

    def settle(self) -> None:
        """Wait until llama.cpp has caught up with every adapter load and unload so far."""
        self._solo_ops.submit(lambda: None).result()

    def adapters(self) -> list[str]:
        return self.batch.adapters()

    def adapter_paths(self) -> dict[str, Path]:
        return self.batch.adapter_paths()

    def adapters_in_use(self) -> set[str]:
        return self.batch.adapters_in_use() | self.solo.adapters_in_use()

    # --- the rest: the batch engine's ----------------------------------------------------
    @property
    def on_request(self) -> Callable[[str], None] | None:
        return self.batch.on_request

    @on_request.setter
    def on_request(self, callback: Callable[[str], None] | None) -> None:
        self.batch.on_request = callback
        self.solo.on_request = callback

    @property
    def device(self) -> str:
        return self.batch.device

    @property
    def batching(self) -> bool:
        return self.batch.batching

    def count_tokens(self, text: str) -> int:
        return self.batch.count_tokens(text)

    def logits_finite(self, text: str, adapter: str | None = None) -> bool:
        return self.batch.logits_finite(text, adapter)

    def queue_depth(self) -> tuple[int, int]:
        (a, b), (c, d) = self.batch.queue_depth(), self.solo.queue_depth()
        return a + c, b + d

    def health(self) -> EngineHealth:
        mine = self.batch.health()
        with self._lock:
            solo, batch = self.served["solo"], self.served["batch"]
            long = self.served["long_prompts"]
            held = len(self._solo_adapters)
        return EngineHealth(
            mine.ok,
            f"{mine.detail}; lone requests with up to {self.solo_prompt_tokens} prompt tokens "
            f"on llama.cpp ({held} adapter(s) there; {solo} answered there, {batch} batched, "
            f"{long} of them lone with a longer prompt)",
        )

    def close(self) -> None:
        self._solo_ops.shutdown(wait=True, cancel_futures=True)
        try:
            self.batch.close()
        finally:
            self.solo.close()

"""The local engine: one transformers base model shared by any number of LoRA adapters."""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from loraflow.engines.base import EngineHealth, GenerationParams, GenerationResult
from loraflow.engines.chat import check_messages, render_prompt
from loraflow.engines.peft_adapters import attach_adapter, detach_adapter
from loraflow.engines.stops import StopFilter, truncate_at_stop
from loraflow.errors import InvalidInput, LoraflowError, NotFound
from loraflow.hardware import (
    auto_serving_precision,
    int8_companion,
    release_cpu_pool,
    serving_precision,
)
from loraflow.models.adapters import check_adapter_folder, discover_adapters
from loraflow.models.load import load_model_and_tokenizer, resolve_device
from loraflow.models.resolve import resolve_base_model

log = logging.getLogger(__name__)

# PEFT's name for "no adapter" inside a per-request adapter_names list.
BASE_ADAPTER = "__base__"


class TurnLock:
    """The engine's lock, handed to a waiting thread between two batch steps.

    With a plain lock the batch thread, releasing it after a step and taking it again for
    the next, usually wins: an adapter load waiting for a gap between steps could wait for
    the whole batch. The batch thread calls `let_waiters_in` between steps instead.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = threading.Lock()
        self._waiting = 0

    def __enter__(self) -> TurnLock:
        with self._count:
            self._waiting += 1
        try:
            self._lock.acquire()
        finally:
            with self._count:
                self._waiting -= 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def let_waiters_in(self, timeout: float = 1.0) -> None:
        """Wait (up to `timeout` seconds) until the threads waiting for the lock now have it."""
        deadline = time.monotonic() + timeout
        while self._waiting and time.monotonic() < deadline:
            time.sleep(0.0005)


class HFEngine:
    """Generate with a local transformers model, picking a LoRA adapter per request."""

    def __init__(
        self, model: Any, tokenizer: Any, name: str = "local", *, base_model_name: str = ""
    ) -> None:
        from loraflow.models.cpu_precision import (
            cpu_precision_of,
            int8_prompts_of,
            int8_uncalibrated,
        )

        self.name = name
        self.tokenizer = tokenizer
        self.base_model_name = base_model_name or getattr(model.config, "name_or_path", "")
        self.device = str(model.device)
        # fp32, or bf16 / int8 when the CPU base model's linears run in that (LOCAL_PRECISION).
        self.precision = cpu_precision_of(model) if self.device == "cpu" else "native"
        # Shown in health: int8 that fell back to its uncalibrated form (a failed calibration),
        # and int8 that evaluates prompts in int8 too (LOCAL_INT8_PROMPTS).
        self._precision_note = ", uncalibrated" if int8_uncalibrated(model) else ""
        if int8_prompts_of(model):
            self._precision_note += ", prompts int8"
        self._base = model
        self._peft: Any = None
        self._adapters: dict[str, tuple[str, Path]] = {}  # public name -> (PEFT name, folder)
        self._counter = 0
        # generate() is not safe to run twice at once on one model, and adapters change it.
        self._lock = TurnLock()
        self._scheduler: Any = None
        # Told the adapter name when a request with an adapter reaches the engine.
        self.on_request: Callable[[str], None] | None = None

    def enable_batching(self, max_batch: int = 16, *, lean: bool = True) -> None:
        """Serve concurrent requests (any mix of adapters) through one continuous batch.

        `lean` runs the batch on the lean decoder where the model and adapters allow it
        (LOCAL_DECODER=lean); False keeps transformers' forward for every step.
        """
        from loraflow.engines.batching import BatchScheduler

        if self._scheduler is None:
            self._scheduler = BatchScheduler(self, max_batch, lean=lean)
            # The batch thread does the work from now on; the thread that loaded the model
            # (and ran its parallel ops) keeps no pool of workers to slow that thread down.
            release_cpu_pool()

    def close(self) -> None:
        """Stop the batch scheduler thread, if any."""
        if self._scheduler is not None:
            self._scheduler.close()
            self._scheduler = None

    @property
    def batching(self) -> bool:
        """Whether requests go through the continuous-batching scheduler."""
        return self._scheduler is not None

    def queue_depth(self) -> tuple[int, int]:
        """(requests decoding, requests waiting to join the batch); (0, 0) without batching."""
        return self._scheduler.depth() if self._scheduler is not None else (0, 0)

    def adapters_in_use(self) -> set[str]:
        """Attached adapters that a request in the batch (queued or decoding) uses."""
        if self._scheduler is None:
            return set()
        internal = self._scheduler.adapters_in_use()
        return {name for name, (peft_name, _) in self._adapters.items() if peft_name in internal}

    def adapters(self) -> list[str]:
        """Names of the attached adapters, in the order they were attached."""
        return list(self._adapters)

    def adapter_paths(self) -> dict[str, Path]:
        """Attached adapters and the folders they were loaded from."""
        return {name: path for name, (_, path) in self._adapters.items()}

    def load_adapter(self, name: str, path: Path, *, replace: bool = False) -> None:
        """Attach the PEFT adapter in folder `path` under `name`; `replace` swaps it in place."""
        if not name or not name.strip():
            raise InvalidInput(f"adapter name {name!r} is empty")
        check_adapter_folder(path)
        with self._lock:
            self._load_locked(name, path, replace)

    def _load_locked(self, name: str, path: Path, replace: bool = False) -> None:
        """`load_adapter` with the engine lock already held (between two batch steps)."""
        old = self._adapters.get(name)
        if old is not None and not replace:
            raise InvalidInput(
                f"an adapter named {name!r} is already loaded from "
                f"{self._adapters[name][1]}; unload it first or pick another name"
            )
        # PEFT module keys cannot hold arbitrary folder names (dots break them).
        internal = f"lf_adapter_{self._counter}"
        self._counter += 1
        self._peft = attach_adapter(
            self._base, self._peft, internal, path, name, self.base_model_name
        )
        # The new version is live before the old one goes, so the name never disappears.
        self._adapters[name] = (internal, path)
        if old is not None:
            self._drop_internal(old[0])

    def _drop_internal(self, internal: str) -> None:
        """Detach a PEFT adapter; rows still decoding with it fail. The caller holds the lock."""
        if self._scheduler is not None:
            self._scheduler.drop_adapter(internal)
        self._peft = detach_adapter(self._peft, internal)

    def unload_adapter(self, name: str) -> None:
        """Detach adapter `name`; the base model and other adapters stay loaded."""
        with self._lock:
            if name not in self._adapters:
                raise self._unknown(name)
            internal, _ = self._adapters.pop(name)
            self._drop_internal(internal)

    def health(self) -> EngineHealth:
        """Always ok once constructed: the model is in memory."""
        shown = self.precision not in ("fp32", "native")
        precision = f" ({self.precision}{self._precision_note})" if shown else ""
        return EngineHealth(
            True,
            f"{self.base_model_name} on {self.device}{precision}"
            f" with {len(self._adapters)} adapter(s)",
        )

    def generate(
        self, messages: list[dict[str, str]], params: GenerationParams, adapter: str | None = None
    ) -> GenerationResult:
        """Answer `messages` in one piece, with `adapter` or the base model (None)."""
        return self._generate(self._prepare(messages, params, adapter), params, adapter)

    def generate_text(
        self, prompt: str, params: GenerationParams, adapter: str | None = None
    ) -> GenerationResult:
        """Continue the raw `prompt` (no chat template), with `adapter` or the base model."""
        return self._generate(self._prepare_text(prompt, params, adapter), params, adapter)

    def stream_text(
        self, prompt: str, params: GenerationParams, adapter: str | None = None
    ) -> Iterator[str]:
        """Continue the raw `prompt` as text pieces; bad input raises before the first piece."""
        inputs = self._prepare_text(prompt, params, adapter)
        return self._stream(inputs, params, adapter)

    def count_tokens(self, text: str) -> int:
        """How many tokens `text` takes for this model's tokenizer."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _generate(
        self, inputs: dict, params: GenerationParams, adapter: str | None
    ) -> GenerationResult:
        if self._scheduler is not None:
            ids = inputs["input_ids"]
            return self._scheduler.generate(
                ids, params, self._internal(adapter), on_queued=lambda: self._arrived(adapter)
            )
        prompt_len = inputs["input_ids"].shape[1]
        with self._lock:
            self._arrived(adapter)
            output = self._run(inputs, params, adapter)
        new_ids = output[0, prompt_len:].tolist()
        full = self.tokenizer.decode(new_ids, skip_special_tokens=True)
        text, hit = truncate_at_stop(full, params.stop)
        ended = hit or len(new_ids) < params.max_new_tokens
        ended = ended or (bool(new_ids) and new_ids[-1] in self._eos_ids())
        return GenerationResult(text, prompt_len, len(new_ids), "stop" if ended else "length")

    def stream(
        self, messages: list[dict[str, str]], params: GenerationParams, adapter: str | None = None
    ) -> Iterator[str]:
        """Answer `messages` as text pieces; bad input raises here, before the first piece."""
        inputs = self._prepare(messages, params, adapter)
        return self._stream(inputs, params, adapter)

    def _stream(self, inputs: dict, params: GenerationParams, adapter: str | None) -> Iterator[str]:
        """Queue the request in the batch now, or stream it alone under the engine lock."""
        if self._scheduler is None:
            return self._stream_alone(inputs, params, adapter)
        stream = self._scheduler.stream(inputs["input_ids"], params, self._internal(adapter))
        self._arrived(adapter)
        return stream

    def _stream_alone(
        self, inputs: dict, params: GenerationParams, adapter: str | None
    ) -> Iterator[str]:
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        cancel = threading.Event()
        errors: list[BaseException] = []

        def work() -> None:
            try:
                with self._lock:
                    self._arrived(adapter)
                    self._run(inputs, params, adapter, streamer=streamer, cancel=cancel)
            except BaseException as exc:  # handed to the consumer, which re-raises it
                errors.append(exc)
                # Without the end signal the consumer would wait on the queue forever.
                streamer.end()

        worker = threading.Thread(target=work, name="loraflow-generate", daemon=True)
        worker.start()
        stops = StopFilter(params.stop)
        try:
            for piece in streamer:
                text = stops.feed(piece)
                if text:
                    yield text
                if stops.stopped:
                    break
            else:
                tail = stops.flush()
                if tail:
                    yield tail
            if errors:
                raise errors[0]
        finally:
            # Stops generation when the consumer quits early or a stop string was seen.
            cancel.set()
            worker.join()

    def _arrived(self, adapter: str | None) -> None:
        if adapter is not None and self.on_request is not None:
            self.on_request(adapter)

    def _prepare(
        self, messages: list[dict[str, str]], params: GenerationParams, adapter: str | None
    ) -> dict:
        params.validate()
        check_messages(messages)
        if adapter is not None and adapter not in self._adapters:
            raise self._unknown(adapter)
        prompt = render_prompt(self.tokenizer, messages)
        # A chat template already writes BOS and friends; adding them again would change the
        # prompt. The plain-transcript fallback has none, so the tokenizer adds them.
        templated = bool(getattr(self.tokenizer, "chat_template", None))
        inputs = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=not templated)
        return self._fits(dict(inputs))

    def _fits(self, inputs: dict) -> dict:
        """The inputs, or InvalidInput when the prompt alone fills the model's context."""
        limit = getattr(self._base.config, "max_position_embeddings", None)
        length = inputs["input_ids"].shape[1]
        if limit and length >= limit:
            raise InvalidInput(
                f"the prompt has {length} tokens; the model's context holds {limit}",
                hint="shorten the messages or the retrieved context",
            )
        return inputs

    def _prepare_text(self, prompt: str, params: GenerationParams, adapter: str | None) -> dict:
        params.validate()
        if not isinstance(prompt, str) or not prompt:
            raise InvalidInput("prompt must be a non-empty string")
        if adapter is not None and adapter not in self._adapters:
            raise self._unknown(adapter)
        return self._fits(dict(self.tokenizer(prompt, return_tensors="pt")))

    def _internal(self, adapter: str | None) -> str | None:
        """PEFT's name for a public adapter name (None: the base model)."""
        if adapter is None:
            return None
        if adapter not in self._adapters:
            raise self._unknown(adapter)
        return self._adapters[adapter][0]

    def eos_ids(self) -> set[int]:
        """Token ids that end an answer."""
        return self._eos_ids()

    def logits_finite(self, text: str, adapter: str | None = None) -> bool:
        """Whether one forward pass over `text` gives finite logits (a deployment check)."""
        import torch

        ids = self.tokenizer(text, return_tensors="pt")["input_ids"].to(self._base.device)
        with self._lock, torch.inference_mode():
            kwargs: dict[str, Any] = {}
            if self._peft is not None:
                kwargs["adapter_names"] = [self._internal(adapter) if adapter else BASE_ADAPTER]
            elif adapter is not None:
                raise self._unknown(adapter)
            out = self.model_for_step()(input_ids=ids, **kwargs)
        return bool(torch.isfinite(out.logits).all())

    def model_for_step(self) -> Any:
        """The module to run a forward pass on (the PeftModel once an adapter is attached)."""
        return self._peft if self._peft is not None else self._base

    def _run(
        self,
        inputs: dict,
        params: GenerationParams,
        adapter: str | None,
        streamer: Any = None,
        cancel: threading.Event | None = None,
    ) -> Any:
        """Call model.generate; the caller holds the lock."""
        import torch
        from transformers import StoppingCriteriaList

        kwargs: dict[str, Any] = {"generation_config": self._generation_config(params)}
        if params.stop:
            kwargs["tokenizer"] = self.tokenizer
        if streamer is not None:
            kwargs["streamer"] = streamer
        if cancel is not None:
            kwargs["stopping_criteria"] = StoppingCriteriaList([_cancelled(cancel)])
        if self._peft is not None:
            # Per-request selection leaves PEFT's active adapter alone, so requests for
            # different adapters could later share one batch.
            if adapter is not None and adapter not in self._adapters:
                raise self._unknown(adapter)
            kwargs["adapter_names"] = [self._adapters[adapter][0] if adapter else BASE_ADAPTER]
        elif adapter is not None:
            raise self._unknown(adapter)
        model = self._peft if self._peft is not None else self._base
        if params.seed is not None:
            torch.manual_seed(params.seed)
        device_inputs = {k: v.to(self._base.device) for k, v in inputs.items()}
        with torch.inference_mode():
            return model.generate(**device_inputs, **kwargs)

    def _generation_config(self, params: GenerationParams) -> Any:
        config = copy.deepcopy(self._base.generation_config)
        config.max_new_tokens = params.max_new_tokens
        config.do_sample = not params.greedy
        # Neutral values when greedy, so transformers does not warn about unused settings.
        config.temperature = 1.0 if params.greedy else params.temperature
        config.top_p = 1.0 if params.greedy else params.top_p
        config.top_k = 50 if params.greedy else params.top_k
        config.repetition_penalty = params.repetition_penalty
        config.stop_strings = list(params.stop) or None
        config.eos_token_id = None if params.ignore_eos else (sorted(self._eos_ids()) or None)
        config.pad_token_id = self.tokenizer.pad_token_id
        return config

    def _eos_ids(self) -> set[int]:
        ids = self._base.generation_config.eos_token_id
        eos = set(ids if isinstance(ids, list) else [] if ids is None else [ids])
        if self.tokenizer.eos_token_id is not None:
            eos.add(self.tokenizer.eos_token_id)
        return eos

    def _unknown(self, name: str) -> NotFound:
        known = ", ".join(repr(n) for n in self._adapters) or "none"
        return NotFound(f"adapter {name!r} is not loaded; loaded adapters: {known}")


def _cancelled(event: threading.Event) -> Any:
    import torch
    from transformers import StoppingCriteria

    class Cancelled(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            return torch.full(
                (input_ids.shape[0],), event.is_set(), dtype=torch.bool, device=input_ids.device
            )

    return Cancelled()


def load_local_engine(
    base_model_name: str,
    cache_dir: Path,
    device: str,
    quantization: str | None,
    adapters_root: Path | None,
    max_batch: int = 0,
    *,
    lean: bool = True,
    half: bool = True,
    memory_fraction: float = 1.0,
    precision: str = "fp32",
    profile_dir: Path | None = None,
    int8_prompts: bool = False,
) -> tuple[HFEngine, list[str]]:
    """Resolve and load the base model, attach every adapter found; warnings for failures.

    `max_batch` > 0 serves requests through the continuous-batching scheduler (on the lean
    decoder where it can run the model, unless `lean` is False); `half` and
    `memory_fraction` are ENABLE_FP16 and CUDA_MEMORY_FRACTION (CUDA only). `precision` is
    LOCAL_PRECISION (CPU only): fp32, bf16, int8, or auto (what this host's cached
    micro-benchmark in `profile_dir`, default `cache_dir`, measured faster);
    `int8_prompts` is LOCAL_INT8_PROMPTS.
    """
    device = resolve_device(device)
    resolved = resolve_base_model(base_model_name, cache_dir)
    model, tokenizer = load_model_and_tokenizer(
        resolved, device, quantization, half=half, memory_fraction=memory_fraction
    )
    if device == "cpu" and not quantization:
        apply_local_precision(
            model, precision, profile_dir or cache_dir, tokenizer, int8_prompts=int8_prompts
        )
    engine = HFEngine(model, tokenizer, base_model_name=resolved.display_name)
    warnings: list[str] = []
    for name, path in (discover_adapters(adapters_root) if adapters_root else {}).items():
        try:
            engine.load_adapter(name, path)
        except LoraflowError as exc:
            warnings.append(f"adapter {name!r} was not attached: {exc}")
    if max_batch > 0:
        engine.enable_batching(max_batch, lean=lean)
    return engine, warnings


def apply_local_precision(
    model: Any,
    setting: str,
    profile_dir: Path,
    tokenizer: Any = None,
    *,
    int8_prompts: bool = False,
) -> str:
    """Run a CPU model's base linears as LOCAL_PRECISION `setting` says on this host; returns
    what it runs ("fp32", "bf16", "int8" or "int8+bf16"). With `tokenizer`, int8 is
    calibrated (one forward of a fixed text) and covers every linear; `int8_prompts`
    (LOCAL_INT8_PROMPTS) runs calibrated int8 linears' prompts in int8 where there is no bf16
    companion."""
    from loraflow.models.cpu_precision import (
        CALIBRATION_TOKENS,
        activation_ranges,
        apply_cpu_precision,
        calibration_batches,
        cpu_precision_of,
    )

    chosen = local_precision(setting, profile_dir)
    companion = int8_companion(profile_dir) if chosen == "int8" else "fp32"
    ranges = None
    if chosen == "int8" and tokenizer is not None:
        context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        tokens = min(CALIBRATION_TOKENS, context or CALIBRATION_TOKENS)
        try:
            ranges = activation_ranges(model, calibration_batches(tokenizer, tokens))
        except Exception as exc:  # noqa: BLE001 - any model's forward may refuse the text
            # Uncalibrated int8 (LM head and down projections kept) still serves.
            log.warning("int8 calibration failed, running uncalibrated int8: %s", exc)
    apply_cpu_precision(model, chosen, companion, ranges, int8_prompts=int8_prompts)
    return cpu_precision_of(model)


def local_precision(setting: str, profile_dir: Path) -> str:
    """LOCAL_PRECISION made concrete: `auto` reads (or first measures) this host's profile."""
    if setting == "auto":
        return auto_serving_precision(profile_dir)
    return serving_precision(setting, {})

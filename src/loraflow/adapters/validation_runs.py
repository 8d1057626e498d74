"""The model side of validation: load base + adapter, generate greedily, eval loss, timing."""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraflow.datasets.encode import IGNORE, Encoded, encode_examples
from loraflow.datasets.formats import Example, guess_type, load_examples
from loraflow.datasets.records import read_records
from loraflow.engines.chat import render_prompt
from loraflow.engines.peft_adapters import attach_adapter
from loraflow.errors import InvalidInput, ModelLoadError, NotFound
from loraflow.models.load import load_model_and_tokenizer, resolve_device
from loraflow.models.resolve import ResolvedModel

ADAPTER_NAME = "validated"
DEFAULT_MAX_LEN = 512  # the training default (TrainParams.max_len)
TIMING_PROMPT = "Write a short paragraph about the ocean."
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@dataclass
class LossResult:
    """Token-weighted mean next-token loss over the target (answer) tokens."""

    loss: float
    tokens: int


class ModelUnderTest:
    """A loaded base model, with the adapter attached when one is validated."""

    def __init__(self, model: Any, tokenizer: Any, device: str, adapter_dir: Path | None) -> None:
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.has_adapter = adapter_dir is not None
        meta = _read_json(adapter_dir / "loraflow.json") if adapter_dir else {}
        args = _read_json(adapter_dir / "training_args.json") if adapter_dir else {}
        loss = meta.get("eval_loss")
        self.training_eval_loss = float(loss) if isinstance(loss, int | float) else None
        max_len = args.get("max_len")
        # Same window as training, so the loss is comparable with the one it logged.
        self.max_len = max_len if isinstance(max_len, int) and max_len > 0 else DEFAULT_MAX_LEN
        own: tuple[Any, str | None] = (
            _adapter_tokenizer(adapter_dir) if adapter_dir else (None, None)
        )
        self.adapter_tokenizer, self.adapter_tokenizer_error = own

    def use(self, adapter: bool = True) -> contextlib.AbstractContextManager:
        """A context in which the model runs with (True) or without (False) the adapter."""
        if self.has_adapter and not adapter:
            return self.model.disable_adapter()
        return contextlib.nullcontext()

    def generate(
        self, prompt: str, max_new_tokens: int, adapter: bool = True, fixed: bool = False
    ) -> tuple[str, int, float]:
        """Greedy reply to a user message: text, new tokens, seconds; fixed: never stop early."""
        import torch

        text = render_prompt(self.tokenizer, [{"role": "user", "content": prompt}])
        templated = bool(getattr(self.tokenizer, "chat_template", None))
        enc = self.tokenizer(text, return_tensors="pt", add_special_tokens=not templated)
        enc = {k: v.to(self.device) for k, v in enc.items()}
        config = self._generation_config(max_new_tokens, fixed)
        with self.use(adapter), torch.inference_mode():
            self._sync()
            start = time.perf_counter()
            out = self.model.generate(**enc, generation_config=config)
            self._sync()
            seconds = time.perf_counter() - start
        new = out[0, enc["input_ids"].shape[1] :]
        return self.tokenizer.decode(new, skip_special_tokens=True), int(new.shape[0]), seconds

    def logits_finite(self, prompt: str) -> dict[str, Any]:
        """Counts of non-finite values in the logits of one forward pass over `prompt`."""
        import torch

        ids = self.tokenizer(prompt, return_tensors="pt")["input_ids"].to(self.device)
        with torch.inference_mode():
            logits = self.model(input_ids=ids).logits
        return {
            "positions": int(logits.shape[1]),
            "nan": int(torch.isnan(logits).sum()),
            "inf": int(torch.isinf(logits).sum()),
        }

    def encode(self, examples: list[Example]) -> list[Encoded]:
        """Examples as token ids and labels, cut at the training window."""
        return encode_examples(examples, self.tokenizer, self.max_len)

    def weight_bytes(self, adapter: bool) -> int:
        """Bytes of the parameters used: the base model's, plus the adapter's when True."""
        total = 0
        for name, p in self.model.named_parameters():
            if adapter or "lora_" not in name:
                total += p.numel() * p.element_size()
        return total

    def release(self) -> None:
        """Drop the model so its memory can be freed before the caller continues."""
        self.model = None
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def _generation_config(self, max_new_tokens: int, fixed: bool) -> Any:
        import copy

        config = copy.deepcopy(self.model.generation_config)
        config.max_new_tokens = max_new_tokens
        # Greedy, so the same model gives the same report; neutral sampling values keep
        # transformers from warning about settings greedy decoding does not use.
        config.do_sample, config.temperature, config.top_p, config.top_k = False, 1.0, 1.0, 50
        config.repetition_penalty = 1.0
        config.pad_token_id = self.tokenizer.pad_token_id
        if fixed:
            # Timed runs all produce exactly max_new_tokens, so base and adapter do equal work.
            config.eos_token_id = None
            config.min_new_tokens = max_new_tokens
        return config

    def _sync(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()


def load_model_under_test(
    adapter_dir: Path | None, base_model_dir: Path, device: str
) -> tuple[ModelUnderTest | None, dict[str, Any], str | None]:
    """Load the base model and attach the adapter: (model, facts, error if the adapter failed)."""
    resolved = _resolve_base(base_model_dir)
    device = resolve_device(device)
    start = time.perf_counter()
    model, tokenizer = load_model_and_tokenizer(resolved, device)
    facts: dict[str, Any] = {"base_model": resolved.display_name, "device": device}
    if adapter_dir is not None:
        try:
            model = attach_adapter(
                model, None, ADAPTER_NAME, adapter_dir, adapter_dir.name, resolved.display_name
            )
        except ModelLoadError as exc:
            facts["load_s"] = round(time.perf_counter() - start, 3)
            return None, facts, str(exc)
        lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
        facts["adapter_parameters"] = int(lora)
    facts["load_s"] = round(time.perf_counter() - start, 3)
    return ModelUnderTest(model, tokenizer, device, adapter_dir), facts, None


def load_validation_examples(val_file: Path) -> list[Example]:
    """Examples of a validation file (Alpaca, ShareGPT or raw; the format is guessed)."""
    records = read_records(val_file)
    if not records:
        raise InvalidInput(f"validation file {val_file.name!r} holds no records")
    first = records[0]
    kind = guess_type(first.data)
    if kind is None:
        keys = sorted(first.data) if isinstance(first.data, dict) else type(first.data).__name__
        raise InvalidInput(
            f"{first.where} is neither an Alpaca, ShareGPT nor raw-text record (got {keys})",
            hint='Alpaca: {"instruction", "output"}; ShareGPT: {"conversations": [...]}',
        )
    return load_examples(val_file, kind)


def eval_loss(subject: ModelUnderTest, encoded: list[Encoded], adapter: bool) -> LossResult:
    """Mean next-token loss over all target tokens of `encoded` (with or without the adapter)."""
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    with subject.use(adapter), torch.inference_mode():
        for seq in encoded:
            targets = torch.tensor(seq.labels[1:] + [IGNORE], device=subject.device)
            keep = (targets != IGNORE).nonzero().squeeze(-1)
            if keep.numel() == 0:
                continue
            ids = torch.tensor([seq.input_ids], device=subject.device)
            # Logits only where there is a target: the vocabulary projection is costly.
            logits = subject.model(input_ids=ids, logits_to_keep=keep, use_cache=False).logits
            logits = logits.reshape(-1, logits.shape[-1]).float()
            total += float(F.cross_entropy(logits, targets[keep], reduction="sum"))
            count += int(keep.numel())
    return LossResult(total / count if count else math.nan, count)


def time_generations(
    subject: ModelUnderTest, runs: int, tokens: int, tick: Callable[[], None]
) -> dict[str, dict[str, Any] | None]:
    """Latency, tokens/s and memory of `runs` fixed-length generations, base and adapter.

    Runs alternate base and adapter on the same loaded weights (the base with the adapter
    disabled), so both see the same threads, caches and machine load.
    """
    variants = [False, True] if subject.has_adapter else [False]
    seconds: dict[bool, list[float]] = {v: [] for v in variants}
    made: dict[bool, int] = {v: 0 for v in variants}
    peak: dict[bool, int] = {v: 0 for v in variants}
    for v in variants:  # one short untimed warm-up each: the first call pays one-off costs
        subject.generate(TIMING_PROMPT, min(tokens, 4), adapter=v, fixed=True)
        tick()
    for _ in range(runs):
        for v in variants:
            with _peak_memory(subject.device) as mem:
                _, n, s = subject.generate(TIMING_PROMPT, tokens, adapter=v, fixed=True)
            seconds[v].append(s)
            made[v] += n
            peak[v] = max(peak[v], mem["bytes"])
            tick()

    def summary(v: bool) -> dict[str, Any]:
        weights = subject.weight_bytes(adapter=v)
        return {
            "runs": runs,
            "new_tokens": tokens,
            "tokens_per_s": round(made[v] / sum(seconds[v]), 3),
            "latency_p50_s": round(_percentile(seconds[v], 50), 4),
            "latency_p95_s": round(_percentile(seconds[v], 95), 4),
            "weights_mb": round(weights / 2**20, 3),
            "peak_generation_mb": round(peak[v] / 2**20, 3),
            "memory_mb": round((weights + peak[v]) / 2**20, 3),
            "memory_source": "cuda max_memory_allocated"
            if subject.device.startswith("cuda")
            else "peak RSS growth while generating",
        }

    return {"base": summary(False), "adapter": summary(True) if subject.has_adapter else None}


@contextlib.contextmanager
def _peak_memory(device: str) -> Iterator[dict[str, int]]:
    """Peak memory growth inside the block: CUDA allocator stats, or sampled RSS on CPU."""
    result = {"bytes": 0}
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        yield result
        result["bytes"] = max(0, torch.cuda.max_memory_allocated() - before)
        return
    import psutil  # installed with accelerate

    proc = psutil.Process()
    before = proc.memory_info().rss
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.005):
            peak[0] = max(peak[0], proc.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        stop.set()
        sampler.join()
        peak[0] = max(peak[0], proc.memory_info().rss)
        result["bytes"] = max(0, peak[0] - before)


class MergedModelUnderTest(ModelUnderTest):
    """A merged model folder, compared with its base: "with adapter" is the merged model."""

    def __init__(self, merged: Any, base: Any, tokenizer: Any, device: str) -> None:
        super().__init__(merged, tokenizer, device, None)
        self.merged, self.base = merged, base
        self.has_adapter = True  # every comparison runs against the base model

    @contextlib.contextmanager
    def _swapped(self, adapter: bool) -> Iterator[None]:
        self.model = self.merged if adapter else self.base
        try:
            yield
        finally:
            self.model = self.merged

    def use(self, adapter: bool = True) -> contextlib.AbstractContextManager:
        return self._swapped(adapter)

    def weight_bytes(self, adapter: bool) -> int:
        model = self.merged if adapter else self.base
        return sum(p.numel() * p.element_size() for p in model.parameters())

    def release(self) -> None:
        self.merged = self.base = None
        super().release()


def load_merged_under_test(
    model_dir: Path, base_model_dir: Path, device: str
) -> tuple[ModelUnderTest | None, dict[str, Any], str | None]:
    """Load a merged model folder and its base: (subject, facts, error if it did not load)."""
    resolved = _resolve_base(base_model_dir)
    device = resolve_device(device)
    start = time.perf_counter()
    base, tokenizer = load_model_and_tokenizer(resolved, device)
    facts: dict[str, Any] = {
        "base_model": resolved.display_name,
        "device": device,
        "model": str(model_dir),
    }
    try:
        merged, _ = load_model_and_tokenizer(_resolve_base(Path(model_dir)), device)
    except (ModelLoadError, NotFound, InvalidInput, OSError, ValueError) as exc:
        facts["load_s"] = round(time.perf_counter() - start, 3)
        return None, facts, str(exc)
    quant = _read_json(Path(model_dir) / "loraflow.json").get("quantization")
    if quant:
        facts["quantization"] = quant
    facts["load_s"] = round(time.perf_counter() - start, 3)
    return MergedModelUnderTest(merged, base, tokenizer, device), facts, None


def _percentile(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def _resolve_base(path: Path) -> ResolvedModel:
    if path.is_file() and path.suffix.lower() == ".gguf":
        return ResolvedModel("gguf", path.parent.resolve(), path.name, path.name)
    if path.is_dir() and (path / "config.json").is_file():
        return ResolvedModel("hf_dir", path.resolve(), None, path.name)
    raise NotFound(
        f"base model not found at {path}: expected a model folder with config.json or a .gguf file"
    )


def _adapter_tokenizer(adapter_dir: Path) -> tuple[Any, str | None]:
    """The tokenizer saved beside the adapter (None if none), or the error loading it."""
    if not any((adapter_dir / name).is_file() for name in TOKENIZER_FILES):
        return None, None
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(
            adapter_dir, local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError, KeyError) as exc:
        return None, f"{type(exc).__name__}: {exc}"[:300]
    return tok, None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}

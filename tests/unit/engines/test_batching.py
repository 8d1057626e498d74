"""Continuous batching: mixed-adapter rows decode together and answer as they would alone."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from loraflow.engines.base import GenerationParams
from loraflow.engines.hf import HFEngine
from loraflow.errors import NotFound
from loraflow.models.load import load_model_and_tokenizer
from loraflow.models.resolve import resolve_base_model

PROMPTS = [
    "Tell me about adapters.",
    "What is a knowledge base, and why would I want one for my support team?",
    "Hi",
    "Explain continuous batching in two sentences.",
]
GREEDY = GenerationParams(max_new_tokens=16, temperature=0)


def _engine(model_dir: Path, adapters_root: Path, tmp: Path, batching: bool) -> HFEngine:
    model, tokenizer = load_model_and_tokenizer(resolve_base_model(str(model_dir), tmp))
    engine = HFEngine(model, tokenizer, base_model_name="tiny-llama")
    engine.load_adapter("alpha", adapters_root / "alpha")
    engine.load_adapter("beta", adapters_root / "beta")
    if batching:
        engine.enable_batching(max_batch=8)
    return engine


@pytest.fixture(scope="module")
def plain(tiny_model_dir: Path, adapters_root: Path, tmp_path_factory) -> HFEngine:
    return _engine(tiny_model_dir, adapters_root, tmp_path_factory.mktemp("p"), False)


@pytest.fixture(scope="module")
def batched(tiny_model_dir: Path, adapters_root: Path, tmp_path_factory) -> HFEngine:
    engine = _engine(tiny_model_dir, adapters_root, tmp_path_factory.mktemp("b"), True)
    yield engine
    engine.close()


def _jobs() -> list[tuple[str, str | None]]:
    adapters = [None, "alpha", "beta"]
    return [(p, adapters[i % 3]) for i, p in enumerate(PROMPTS * 3)]


def _ask(engine: HFEngine, prompt: str, adapter: str | None, params=GREEDY):
    return engine.generate([{"role": "user", "content": prompt}], params, adapter=adapter)


def test_mixed_batch_is_greedy_identical_to_each_adapter_alone(
    plain: HFEngine, batched: HFEngine
) -> None:
    jobs = _jobs()
    alone = [_ask(plain, p, a) for p, a in jobs]
    assert len({r.text for r in alone}) > 3, "adapters and prompts must change the output"
    together: list = [None] * len(jobs)
    # All requests arrive at once, so they share decode steps and join between them.
    barrier = threading.Barrier(len(jobs))

    def run(i: int) -> None:
        barrier.wait()
        together[i] = _ask(batched, *jobs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for (prompt, adapter), a, b in zip(jobs, alone, together, strict=True):
        assert (b.text, b.completion_tokens, b.finish_reason) == (
            a.text,
            a.completion_tokens,
            a.finish_reason,
        ), (prompt, adapter)
        assert b.prompt_tokens == a.prompt_tokens


def test_stream_stop_and_seed(plain: HFEngine, batched: HFEngine) -> None:
    msgs = [{"role": "user", "content": PROMPTS[0]}]
    full = plain.generate(msgs, GREEDY, adapter="alpha").text
    stream = batched.stream(msgs, GREEDY, adapter="alpha")
    pieces = list(stream)
    assert len(pieces) > 1 and "".join(pieces) == full
    assert stream.finish_reason in ("stop", "length") and stream.completion_tokens > 0
    stop = next(full[i : i + 2] for i in range(3, len(full) - 2) if full[i : i + 2].strip())
    cut = GenerationParams(max_new_tokens=16, temperature=0, stop=[stop])
    result = batched.generate(msgs, cut, adapter="alpha")
    assert result.text == full[: full.find(stop)] and result.finish_reason == "stop"
    sampled = GenerationParams(max_new_tokens=12, temperature=1.0, seed=11)
    assert batched.generate(msgs, sampled).text == batched.generate(msgs, sampled).text


def test_abandoned_stream_leaves_the_batch(batched: HFEngine) -> None:
    msgs = [{"role": "user", "content": PROMPTS[1]}]
    stream = batched.stream(msgs, GenerationParams(max_new_tokens=400, temperature=0))
    next(stream)
    stream.close()
    # The next request is served; the abandoned one does not run to 400 tokens.
    assert _ask(batched, PROMPTS[2], "beta").completion_tokens > 0
    rows, waiting = batched._scheduler.depth()
    assert (rows, waiting) == (0, 0)


def test_unloading_an_adapter_fails_only_its_requests(
    tiny_model_dir: Path, adapters_root: Path, tmp_path: Path
) -> None:
    engine = _engine(tiny_model_dir, adapters_root, tmp_path, True)
    try:
        msgs = [{"role": "user", "content": PROMPTS[1]}]
        # ignore_eos: the doomed answer must still be decoding when the adapter goes away
        # (a tiny random model can emit EOS within a few tokens).
        long = GenerationParams(max_new_tokens=2000, temperature=0, ignore_eos=True)
        doomed = engine.stream(msgs, long, adapter="alpha")
        kept = engine.stream(msgs, GenerationParams(max_new_tokens=20, temperature=0))
        next(doomed)
        engine.unload_adapter("alpha")
        with pytest.raises(NotFound, match="unloaded"):
            list(doomed)
        assert "".join(kept) and kept.finish_reason is not None
    finally:
        engine.close()

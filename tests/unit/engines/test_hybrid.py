"""LOCAL_ENGINE=hybrid: llama.cpp answers a lone request, concurrent ones join the batch."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from loraflow.engines.base import GenerationParams
from loraflow.engines.hybrid import HybridEngine
from tests.unit.models.tiny import make_adapter

pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.integration

GREEDY = GenerationParams(max_new_tokens=12, temperature=0, ignore_eos=True)
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
OTHER = [{"role": "user", "content": "Name three colours."}]


def _on_lm_head(base: Path, dest: Path) -> Path:
    """An adapter transformers serves but llama.cpp refuses: SmolLM2 ties lm_head to the
    embeddings, and llama.cpp ignores a LoRA there."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, local_files_only=True)
    torch.manual_seed(5)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "lm_head"], init_lora_weights=False
    )
    get_peft_model(model, config).save_pretrained(dest)
    return dest


@pytest.fixture(scope="module")
def hybrid(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HybridEngine]:
    from loraflow.adapters.gguf import export_gguf_adapter
    from loraflow.adapters.inspect import checksum
    from loraflow.engines.hf import load_local_engine
    from loraflow.engines.llamacpp_load import load_llamacpp_engine

    root = tmp_path_factory.mktemp("hybrid-adapters")
    make_adapter(smollm2_dir, root / "alpha", seed=1)
    cache = smollm2_dir.parents[1]
    batch, warnings = load_local_engine("bundled:smollm2", cache, "cpu", None, root, max_batch=4)
    assert warnings == []
    solo, warnings = load_llamacpp_engine(
        "bundled:smollm2",
        cache,
        root,
        threads=2,
        export_lora=export_gguf_adapter,
        checksum=checksum,
        lora_cache_dir=tmp_path_factory.mktemp("hybrid-gguf"),
    )
    assert warnings == []
    engine = HybridEngine(batch, solo)
    yield engine
    engine.close()


def test_a_lone_request_is_answered_by_llamacpp(hybrid: HybridEngine) -> None:
    for adapter in (None, "alpha"):
        before = dict(hybrid.served)
        answer = hybrid.generate(QUESTION, GREEDY, adapter=adapter)
        assert hybrid.served == {**before, "solo": before["solo"] + 1}
        assert answer.text == hybrid.solo.generate(QUESTION, GREEDY, adapter=adapter).text
        assert answer.completion_tokens == 12
    # The adapter changes llama.cpp's answer: it really was applied there.
    assert (
        hybrid.generate(QUESTION, GREEDY, adapter="alpha").text
        != hybrid.generate(QUESTION, GREEDY).text
    )


def test_a_request_arriving_while_one_runs_joins_the_batch(hybrid: HybridEngine) -> None:
    long = GenerationParams(max_new_tokens=64, temperature=0, ignore_eos=True)
    stream = hybrid.stream(QUESTION, long, adapter="alpha")
    first = next(stream)  # llama.cpp is answering it now
    assert first
    before = dict(hybrid.served)
    during = hybrid.generate(OTHER, GREEDY, adapter="alpha")
    assert hybrid.served == {**before, "batch": before["batch"] + 1}
    assert during.text == hybrid.batch.generate(OTHER, GREEDY, adapter="alpha").text
    rest = "".join(stream)
    assert stream.finish_reason == "length"  # the llama.cpp stream's own fields show through
    assert first + rest == hybrid.solo.generate(QUESTION, long, adapter="alpha").text
    # Finished: the next lone request is llama.cpp's again.
    hybrid.generate(OTHER, GREEDY)
    assert hybrid.served["solo"] == before["solo"] + 1


def test_a_lone_request_with_a_long_prompt_goes_to_the_batch(hybrid: HybridEngine) -> None:
    chat = [
        {"role": "system", "content": "You answer questions about European capitals. " * 6},
        *QUESTION,
    ]
    work = hybrid.solo.prompt_work(chat, None)  # type: ignore[attr-defined]
    assert work > 60
    limit = hybrid.solo_prompt_tokens
    try:
        hybrid.solo_prompt_tokens = work - 1
        before = dict(hybrid.served)
        answer = hybrid.generate(chat, GREEDY)
        assert hybrid.served == {
            **before, "batch": before["batch"] + 1, "long_prompts": before["long_prompts"] + 1
        }  # fmt: skip
        assert answer.text == hybrid.batch.generate(chat, GREEDY).text
        # Once llama.cpp has evaluated the conversation, the next turn's prompt is mostly in
        # its cache: only the new turn counts, and llama.cpp takes it.
        hybrid.solo_prompt_tokens = work
        first = hybrid.generate(chat, GREEDY)
        assert hybrid.served["solo"] == before["solo"] + 1
        follow = [*chat, {"role": "assistant", "content": first.text}, *OTHER]
        assert hybrid.solo.prompt_work(follow, None) < work  # type: ignore[attr-defined]
        assert hybrid.generate(follow, GREEDY).completion_tokens == 12
        assert hybrid.served["solo"] == before["solo"] + 2
    finally:
        hybrid.solo_prompt_tokens = limit


def test_requests_compared_with_each_other_all_go_to_the_batch(hybrid: HybridEngine) -> None:
    from loraflow.engines.hybrid import batch_only

    before = dict(hybrid.served)
    with batch_only():
        answer = hybrid.generate(QUESTION, GREEDY, adapter="alpha")
    assert hybrid.served == {**before, "batch": before["batch"] + 1}
    assert answer.text == hybrid.batch.generate(QUESTION, GREEDY, adapter="alpha").text
    hybrid.generate(QUESTION, GREEDY)  # outside it, a lone request is llama.cpp's again
    assert hybrid.served["solo"] == before["solo"] + 1


def test_a_closed_stream_frees_llamacpp_for_the_next_request(hybrid: HybridEngine) -> None:
    stream = hybrid.stream_text("Once upon a time", GREEDY)
    next(stream)
    stream.close()
    before = hybrid.served["solo"]
    hybrid.generate_text("Once upon a time", GREEDY)
    assert hybrid.served["solo"] == before + 1


def test_an_adapter_llamacpp_refuses_is_served_by_the_batch(
    hybrid: HybridEngine, smollm2_dir: Path, tmp_path: Path
) -> None:
    folder = _on_lm_head(smollm2_dir, tmp_path / "head")
    hybrid.load_adapter("head", folder)
    hybrid.settle()
    try:
        assert "head" in hybrid.adapters() and "head" not in hybrid.solo.adapters()
        before = dict(hybrid.served)
        answer = hybrid.generate(QUESTION, GREEDY, adapter="head")
        assert hybrid.served == {**before, "batch": before["batch"] + 1}
        assert answer.text == hybrid.batch.generate(QUESTION, GREEDY, adapter="head").text
        assert "prompt tokens on llama.cpp (1 adapter(s) there" in hybrid.health().detail
    finally:
        hybrid.unload_adapter("head")
    assert "head" not in hybrid.adapters()


def test_an_unloaded_adapter_leaves_both_engines(
    hybrid: HybridEngine, smollm2_dir: Path, tmp_path: Path
) -> None:
    folder = make_adapter(smollm2_dir, tmp_path / "beta", seed=2)
    hybrid.load_adapter("beta", folder)
    assert "beta" in hybrid.adapters()  # the batch serves it at once
    hybrid.settle()
    assert "beta" in hybrid.solo.adapters()
    assert hybrid.generate(QUESTION, GREEDY, adapter="beta").text == (
        hybrid.solo.generate(QUESTION, GREEDY, adapter="beta").text
    )
    hybrid.unload_adapter("beta")
    hybrid.settle()
    assert "beta" not in hybrid.adapters() and "beta" not in hybrid.solo.adapters()


def test_a_refused_load_keeps_the_adapter_on_llamacpp(hybrid: HybridEngine) -> None:
    from loraflow.errors import LoraflowError

    path = hybrid.adapter_paths()["alpha"]
    with pytest.raises(LoraflowError):
        hybrid.load_adapter("alpha", path)  # taken, and no replace: refused
    before = hybrid.served["solo"]
    hybrid.generate(QUESTION, GREEDY, adapter="alpha")
    assert hybrid.served["solo"] == before + 1


def test_a_dropped_stream_frees_llamacpp(hybrid: HybridEngine) -> None:
    import gc

    stream = hybrid.stream(QUESTION, GREEDY)
    next(stream)
    del stream
    gc.collect()
    before = hybrid.served["solo"]
    answer = hybrid.generate(OTHER, GREEDY)  # would wait forever on llama.cpp's lock
    assert hybrid.served["solo"] == before + 1 and answer.completion_tokens == 12


def test_the_setting_loads_both_engines_on_the_bundled_model(
    smollm2_dir: Path, tmp_path: Path
) -> None:
    from loraflow.config import Settings
    from loraflow.services.runtime import load_local

    settings = Settings(
        data_dir=tmp_path, cache_dir=smollm2_dir.parents[1], local_engine="hybrid",
        lora_model_path=tmp_path / "none", llamacpp_threads=2,
    )  # fmt: skip
    engine, warnings = load_local(settings)
    try:
        assert warnings == [] and isinstance(engine, HybridEngine)
        assert engine.batching and "up to 128 prompt tokens on llama.cpp" in engine.health().detail
    finally:
        engine.close()


def test_a_base_without_a_gguf_is_served_by_transformers_alone(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from loraflow.config import Settings
    from loraflow.engines.hf import HFEngine
    from loraflow.services.runtime import load_local

    settings = Settings(
        data_dir=tmp_path, cache_dir=tmp_path / "cache", local_engine="hybrid",
        base_model_name=str(tiny_model_dir), lora_model_path=tmp_path / "none",
    )  # fmt: skip
    engine, warnings = load_local(settings)
    try:
        assert isinstance(engine, HFEngine)
        assert len(warnings) == 1 and "serves with transformers alone" in warnings[0]
        assert ".gguf" in warnings[0]
    finally:
        engine.close()

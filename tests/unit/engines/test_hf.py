"""The local engine on a tiny random Llama: adapters per request, stops, streaming."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from loraflow.engines.base import Engine, GenerationParams
from loraflow.engines.hf import HFEngine, load_local_engine
from loraflow.errors import InvalidInput, ModelLoadError, NotFound
from loraflow.models.load import load_model_and_tokenizer
from loraflow.models.resolve import resolve_base_model

MESSAGES = [{"role": "user", "content": "Tell me about adapters."}]
TOKENS = 12
GREEDY = GenerationParams(max_new_tokens=TOKENS, temperature=0)


def _plain_peft_text(model_dir: Path, adapter_dir: Path | None) -> str:
    """What plain transformers + PEFT produce, greedy, for MESSAGES."""
    from peft import PeftModel

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir).eval()
    prompt = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(
            **enc, max_new_tokens=TOKENS, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    return tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path, adapters_root: Path) -> dict[str | None, str]:
    return {
        None: _plain_peft_text(tiny_model_dir, None),
        "alpha": _plain_peft_text(tiny_model_dir, adapters_root / "alpha"),
        "beta": _plain_peft_text(tiny_model_dir, adapters_root / "beta"),
    }


@pytest.fixture
def engine(tiny_model_dir: Path, tmp_path: Path) -> HFEngine:
    model, tokenizer = load_model_and_tokenizer(resolve_base_model(str(tiny_model_dir), tmp_path))
    return HFEngine(model, tokenizer, base_model_name="tiny-llama")


@pytest.fixture
def engine2(engine: HFEngine, adapters_root: Path) -> HFEngine:
    engine.load_adapter("alpha", adapters_root / "alpha")
    engine.load_adapter("beta", adapters_root / "beta")
    return engine


def test_is_an_engine(engine: HFEngine) -> None:
    assert isinstance(engine, Engine)
    assert engine.health().ok
    assert engine.device == "cpu"
    assert engine.base_model_name == "tiny-llama"


def test_base_and_adapters_match_plain_peft(engine2: HFEngine, reference: dict) -> None:
    assert len(set(reference.values())) == 3, "adapters must change the greedy output"
    assert engine2.adapters() == ["alpha", "beta"]
    for adapter in (None, "alpha", "beta", None, "beta"):
        result = engine2.generate(MESSAGES, GREEDY, adapter=adapter)
        assert result.text == reference[adapter], adapter
        assert result.completion_tokens == TOKENS
        assert result.prompt_tokens > 5
        assert result.finish_reason == "length"


def test_base_without_adapters_matches(engine: HFEngine, reference: dict) -> None:
    assert engine.generate(MESSAGES, GREEDY).text == reference[None]


def test_unknown_adapter_lists_known(engine2: HFEngine) -> None:
    with pytest.raises(NotFound) as info:
        engine2.generate(MESSAGES, GREEDY, adapter="gamma")
    assert all(name in str(info.value) for name in ("'gamma'", "'alpha'", "'beta'"))
    with pytest.raises(NotFound, match="alpha"):
        engine2.stream(MESSAGES, GREEDY, adapter="gamma")
    with pytest.raises(NotFound, match="beta"):
        engine2.unload_adapter("gamma")


def test_duplicate_adapter_name(engine2: HFEngine, adapters_root: Path) -> None:
    with pytest.raises(InvalidInput, match="'alpha'"):
        engine2.load_adapter("alpha", adapters_root / "beta")


def test_unload_keeps_the_rest(engine2: HFEngine, reference: dict) -> None:
    engine2.unload_adapter("alpha")
    assert engine2.adapters() == ["beta"]
    assert engine2.generate(MESSAGES, GREEDY, adapter="beta").text == reference["beta"]
    engine2.unload_adapter("beta")
    assert engine2.adapters() == []
    assert engine2.generate(MESSAGES, GREEDY).text == reference[None]


def test_misfit_adapter_is_refused_and_undone(
    engine: HFEngine, misfit_adapter: Path, adapters_root: Path, reference: dict
) -> None:
    with pytest.raises(ModelLoadError) as info:
        engine.load_adapter("misfit", misfit_adapter)
    assert "'misfit'" in str(info.value) and "'tiny-llama'" in str(info.value)
    assert engine.generate(MESSAGES, GREEDY).text == reference[None]
    engine.load_adapter("alpha", adapters_root / "alpha")
    with pytest.raises(ModelLoadError, match="misfit"):
        engine.load_adapter("misfit", misfit_adapter)
    assert engine.adapters() == ["alpha"]
    assert engine.generate(MESSAGES, GREEDY, adapter="alpha").text == reference["alpha"]


def test_stop_string_cuts_text(engine: HFEngine, reference: dict) -> None:
    full = reference[None]
    # A 3-character stop string from the middle of the greedy answer, not at its start.
    starts = [i for i in range(1, len(full) - 3) if full[i : i + 3].strip() == full[i : i + 3]]
    assert starts, f"no usable stop string in {full!r}"
    stop = full[starts[len(starts) // 2] : starts[len(starts) // 2] + 3]
    params = GenerationParams(max_new_tokens=TOKENS, temperature=0, stop=[stop])
    result = engine.generate(MESSAGES, params)
    assert result.text == full[: full.find(stop)]
    assert result.finish_reason == "stop"
    assert result.completion_tokens < TOKENS
    assert "".join(engine.stream(MESSAGES, params)) == result.text


def test_blank_stop_rejected(engine: HFEngine) -> None:
    with pytest.raises(InvalidInput, match="stop string"):
        engine.generate(MESSAGES, GenerationParams(stop=["  "]))


def test_seed_makes_sampling_repeatable(engine: HFEngine) -> None:
    params = GenerationParams(max_new_tokens=TOKENS, temperature=1.0, seed=7)
    assert engine.generate(MESSAGES, params).text == engine.generate(MESSAGES, params).text


def test_stream_joins_to_generate(engine2: HFEngine, reference: dict) -> None:
    for adapter in (None, "alpha"):
        pieces = list(engine2.stream(MESSAGES, GREEDY, adapter=adapter))
        assert len(pieces) > 1
        assert "".join(pieces) == reference[adapter]


@pytest.mark.timeout(60)
def test_stream_ends_and_raises_when_generation_fails(engine: HFEngine, reference: dict) -> None:
    calls = {"n": 0}

    def explode(module: Any, args: Any) -> None:
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("boom in forward")

    handle = engine_model(engine).register_forward_pre_hook(explode)
    try:
        with pytest.raises(RuntimeError, match="boom in forward"):
            list(engine.stream(MESSAGES, GREEDY))
    finally:
        handle.remove()
    # The lock was released: the engine still answers.
    assert engine.generate(MESSAGES, GREEDY).text == reference[None]


@pytest.mark.timeout(60)
def test_abandoned_stream_releases_the_engine(engine: HFEngine, reference: dict) -> None:
    stream = engine.stream(MESSAGES, GenerationParams(max_new_tokens=400, temperature=0))
    next(iter(stream))
    stream.close()
    assert engine.generate(MESSAGES, GREEDY).text == reference[None]


def test_load_local_engine_attaches_and_warns(
    tiny_model_dir: Path, adapters_root: Path, misfit_adapter: Path, tmp_path: Path
) -> None:
    import shutil

    root = tmp_path / "adapters"
    for name in ("alpha", "beta"):
        shutil.copytree(adapters_root / name, root / name)
    shutil.copytree(misfit_adapter, root / "misfit")
    (root / "broken").mkdir()
    (root / "broken" / "adapter_config.json").write_text("{oops")
    (root / "broken" / "adapter_model.safetensors").write_bytes(b"")
    engine, warnings = load_local_engine(str(tiny_model_dir), tmp_path, "cpu", None, root)
    assert engine.adapters() == ["alpha", "beta"]
    assert len(warnings) == 2
    assert "'broken'" in warnings[0] and "'misfit'" in warnings[1]
    assert engine.base_model_name == "tiny-llama"


def engine_model(engine: HFEngine) -> Any:
    """The base torch module, where a hook sees every forward pass."""
    return engine._base


def test_bad_messages_rejected(engine: HFEngine) -> None:
    with pytest.raises(InvalidInput, match="'robot'"):
        engine.generate([{"role": "robot", "content": "hi"}], GREEDY)
    with pytest.raises(InvalidInput, match="non-empty"):
        engine.generate([], GREEDY)


def test_tokenizer_without_chat_template_still_answers(engine: HFEngine) -> None:
    engine.tokenizer.chat_template = None
    result = engine.generate(MESSAGES, GREEDY)
    assert result.completion_tokens == TOKENS and result.prompt_tokens > 5

"""The llama.cpp engine on the bundled SmolLM2 GGUF: answers, streams, stops, LoRA adapters."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from loraflow.engines.base import GenerationParams
from loraflow.errors import ConfigError, InvalidInput, ModelLoadError, NotFound
from tests.unit.models.tiny import make_adapter

pytestmark = pytest.mark.integration
pytest.importorskip("llama_cpp")

QUESTION = [{"role": "user", "content": "Tell me a short story about a cat."}]
STORY = [{"role": "user", "content": "Write a short poem about the sea."}]
ADAPTER = "tuned"


def greedy(tokens: int = 32, **kw: object) -> GenerationParams:
    return GenerationParams(max_new_tokens=tokens, temperature=0, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def lora_root(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Path:
    """A folder holding one PEFT LoRA on SmolLM2 whose random (non-zero) B changes answers."""
    root = tmp_path_factory.mktemp("llamacpp-adapters")
    make_adapter(smollm2_dir, root / ADAPTER, seed=1)
    return root


@pytest.fixture(scope="module")
def lora_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("llamacpp-lora-cache")


@pytest.fixture(scope="module")
def engine(smollm2_dir: Path, lora_root: Path, lora_cache: Path) -> Iterator[object]:
    from loraflow.adapters.gguf import export_gguf_adapter
    from loraflow.adapters.inspect import checksum
    from loraflow.engines.llamacpp_load import load_llamacpp_engine

    engine, warnings = load_llamacpp_engine(
        "bundled:smollm2",
        smollm2_dir.parents[1],
        lora_root,
        # One thread: llama.cpp's threads spin-wait for each other, so on a machine busy with
        # other work a preempted second thread can stall every step.
        threads=1,
        export_lora=export_gguf_adapter,
        checksum=checksum,
        lora_cache_dir=lora_cache,
    )
    assert warnings == []
    yield engine
    engine.close()


def test_greedy_answer_is_sensible(engine) -> None:
    result = engine.generate(QUESTION, greedy())
    assert "cat" in result.text.lower()
    assert result.prompt_tokens > 5 and 0 < result.completion_tokens <= 32
    assert result.finish_reason in ("stop", "length")
    assert engine.adapters() == [ADAPTER] and engine.health().ok


def test_streamed_text_equals_the_answer_in_one_piece(engine) -> None:
    whole = engine.generate(STORY, greedy(48))
    stream = engine.stream(STORY, greedy(48))
    pieces = list(stream)
    assert len(pieces) > 1
    assert "".join(pieces) == whole.text
    assert (stream.completion_tokens, stream.finish_reason) == (
        whole.completion_tokens,
        whole.finish_reason,
    )


def test_stop_strings_cut_the_answer(engine) -> None:
    full = engine.generate(STORY, greedy(48)).text
    words = [w for w in full.split() if len(w) > 3]
    stop = words[len(words) // 2]
    cut = engine.generate(STORY, greedy(48, stop=[stop]))
    assert cut.text == full[: full.index(stop)]
    assert cut.finish_reason == "stop"
    assert "".join(engine.stream(STORY, greedy(48, stop=[stop]))) == cut.text


def test_max_tokens_ends_with_length(engine) -> None:
    result = engine.generate(STORY, greedy(5, ignore_eos=True))
    assert (result.completion_tokens, result.finish_reason) == (5, "length")


def test_a_seed_repeats_a_sampled_answer(engine) -> None:
    params = GenerationParams(max_new_tokens=24, temperature=1.0, top_p=0.95, top_k=50, seed=7)
    assert engine.generate(STORY, params).text == engine.generate(STORY, params).text


def test_raw_prompt_continuation_counts_tokens(engine) -> None:
    result = engine.generate_text("The capital of France is", greedy(8))
    assert result.text.strip() and result.prompt_tokens == engine.count_tokens(
        "The capital of France is"
    )


def test_adapter_changes_the_answer_and_the_base_model_stays_the_same(
    engine, lora_cache: Path
) -> None:
    base = engine.generate(QUESTION, greedy()).text
    tuned = engine.generate(QUESTION, greedy(), adapter=ADAPTER).text
    assert tuned != base
    assert engine.generate(QUESTION, greedy()).text == base
    # Answers do not depend on the request before (no reuse of its prompt's KV cache).
    for _ in range(2):
        assert engine.generate(QUESTION, greedy(), adapter=ADAPTER).text == tuned
    assert len(list(lora_cache.glob("*.gguf"))) == 1  # converted once, cached by checksum


def test_a_reused_prompt_cache_never_changes_an_answer(engine) -> None:
    """Prompts sharing a prefix reuse its cache, and every answer equals a fresh evaluation."""
    system = {"role": "system", "content": "You answer in one short sentence. " * 6}
    asks = [
        [system, {"role": "user", "content": q}]
        for q in ("Name a colour.", "Name a colour!", "Name a fruit.", "What is rain?")
    ]
    asks.append([*asks[0], {"role": "assistant", "content": "Blue."}, asks[2][1]])
    cases = [(msgs, adapter) for msgs in asks for adapter in (None, ADAPTER)]

    def fresh(msgs: list, adapter: str | None) -> str:
        engine.generate_text("Zebras", greedy(1))  # shares nothing past BOS: nothing reused
        return engine.generate(msgs, greedy(12), adapter=adapter).text

    expected = [fresh(m, a) for m, a in cases]
    before = engine.prompt_tokens_reused
    for order in (cases, cases[::-1], [c for c in cases for _ in range(2)]):
        got = [engine.generate(m, greedy(12), adapter=a).text for m, a in order]
        assert got == [expected[cases.index(c)] for c in order]
    # The shared system prompt (over 48 tokens) was taken from the cache, not re-evaluated.
    assert engine.prompt_tokens_reused - before >= 48 * len(cases)


def test_adapters_of_waiting_and_running_requests_count_as_in_use(engine) -> None:
    """What MAX_LOADED_ADAPTERS consults before detaching an adapter to make room."""
    import threading

    assert engine.adapters_in_use() == set()
    running = engine.stream(QUESTION, greedy(30), adapter=ADAPTER)
    assert next(running)  # it holds the context now
    waiting_done = threading.Event()
    waiter = threading.Thread(
        target=lambda: (engine.generate(STORY, greedy(4)), waiting_done.set()), daemon=True
    )
    waiter.start()
    assert engine.adapters_in_use() == {ADAPTER}  # the base model is not an adapter
    assert not waiting_done.is_set()  # the second request waits for the context
    running.close()
    waiter.join(timeout=120)
    assert waiting_done.is_set()
    assert engine.adapters_in_use() == set()


def test_adapters_load_replace_and_unload(engine, lora_root: Path, lora_cache: Path) -> None:
    engine.load_adapter("again", lora_root / ADAPTER)
    assert engine.adapters() == [ADAPTER, "again"]
    assert len(list(lora_cache.glob("*.gguf"))) == 1  # same checksum, same GGUF
    with pytest.raises(InvalidInput, match="already loaded"):
        engine.load_adapter("again", lora_root / ADAPTER)
    engine.load_adapter("again", lora_root / ADAPTER, replace=True)
    same = engine.generate(QUESTION, greedy(), adapter="again").text
    assert same == engine.generate(QUESTION, greedy(), adapter=ADAPTER).text
    engine.unload_adapter("again")
    assert engine.adapters() == [ADAPTER]
    with pytest.raises(NotFound, match="'again' is not loaded; loaded adapters: 'tuned'"):
        engine.generate(QUESTION, greedy(), adapter="again")


def test_deployment_health_check_sees_finite_logits(engine) -> None:
    assert engine.logits_finite("Hello there", ADAPTER)
    assert engine.logits_finite("Hello there")


def test_prompt_longer_than_the_context_is_refused(engine) -> None:
    text = "word " * 9000
    with pytest.raises(InvalidInput, match="context holds"):
        engine.generate_text(text, greedy(4))


def test_transformers_folder_is_refused_with_the_converter_named(tiny_model_dir: Path) -> None:
    from loraflow.engines.llamacpp_load import load_llamacpp_engine

    with pytest.raises(ModelLoadError, match="convert_hf_to_gguf.py") as err:
        load_llamacpp_engine(str(tiny_model_dir), tiny_model_dir.parent, tiny_model_dir)
    assert "LOCAL_ENGINE=llamacpp needs a .gguf base model" in str(err.value)


def test_missing_package_names_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from loraflow.engines.llamacpp_load import load_llamacpp_engine

    # None in sys.modules makes `import llama_cpp` fail as if it were not installed.
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(ConfigError, match="llama-cpp-python") as err:
        load_llamacpp_engine("bundled:smollm2", tmp_path, tmp_path)
    assert "loraflow[llamacpp]" in str(err.value)

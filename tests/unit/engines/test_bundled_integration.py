"""The bundled SmolLM2 answers a chat message through the local engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraflow.engines.base import GenerationParams
from loraflow.engines.hf import load_local_engine
from tests.unit.threads import HAS_PROC, os_threads, settled, torch_threads


@pytest.mark.integration
def test_bundled_smollm2_answers(smollm2_dir: Path, tmp_path: Path) -> None:
    engine, warnings = load_local_engine(
        "bundled:smollm2", smollm2_dir.parents[1], "cpu", None, tmp_path / "no-adapters"
    )
    assert warnings == [] and engine.adapters() == []
    assert engine.base_model_name == "bundled:smollm2"
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    result = engine.generate(messages, GenerationParams(max_new_tokens=24, temperature=0))
    assert result.text.strip()
    assert result.finish_reason in ("stop", "length")


@pytest.mark.integration
@pytest.mark.skipif(not HAS_PROC, reason="needs Linux /proc")
def test_batch_thread_holds_no_cpu_workers_while_idle(smollm2_dir: Path, tmp_path: Path) -> None:
    """A second thread's idle OpenMP team slowed the decode step 1.3-1.9x: the thread that
    loaded the model and the idle batch thread keep none."""
    with torch_threads(2):
        engine, _ = load_local_engine(
            "bundled:smollm2", smollm2_dir.parents[1], "cpu", None, None, max_batch=4
        )
        try:
            loaded = os_threads()  # the batch thread, no worker team anywhere
            messages = [{"role": "user", "content": "What is the capital of France?"}]
            result = engine.generate(messages, GenerationParams(max_new_tokens=8, temperature=0))
            assert result.completion_tokens == 8 or result.finish_reason == "stop"
            assert settled(loaded, timeout=10) == loaded
        finally:
            engine.close()

"""The bundled SmolLM2 answers a chat message through the local engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraflow.engines.base import GenerationParams
from loraflow.engines.hf import load_local_engine


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

"""Fixtures for the training tests: a tiny random Llama with the real SmolLM2 tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.models.tiny import build_tiny_model


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-train") / "tiny-llama", smollm2_dir)

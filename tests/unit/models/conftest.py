"""Fixtures shared by the model tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.models.tiny import build_tiny_model, smollm2_folder


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    return smollm2_folder()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama", smollm2_dir)

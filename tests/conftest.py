"""Shared fixtures: paths and the once-per-run converted bundled model."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Converted bundled models are reused across test runs (conversion takes ~15 s).
TEST_MODEL_CACHE = REPO / ".cache" / "test-models"


@pytest.fixture(scope="session")
def model_cache() -> Path:
    TEST_MODEL_CACHE.mkdir(parents=True, exist_ok=True)
    return TEST_MODEL_CACHE


@pytest.fixture(scope="session")
def smollm2_dir(model_cache: Path) -> Path:
    """The bundled SmolLM2 converted to a safetensors folder."""
    from loraflow.models.resolve import resolve_base_model

    return resolve_base_model("bundled:smollm2", model_cache).path

"""Fixtures shared by the engine tests: a tiny model, two adapters, one that does not fit."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.models.tiny import build_tiny_model, make_adapter, smollm2_folder


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    return smollm2_folder()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama", smollm2_dir)


@pytest.fixture(scope="session")
def adapters_root(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("adapters")
    make_adapter(tiny_model_dir, root / "alpha", seed=1)
    make_adapter(tiny_model_dir, root / "beta", seed=2)
    return root


@pytest.fixture(scope="session")
def misfit_adapter(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Path:
    """An adapter trained for a wider model, so its shapes do not fit the tiny one."""
    work = tmp_path_factory.mktemp("misfit")
    wide = build_tiny_model(work / "wide-llama", smollm2_dir, hidden=48)
    return make_adapter(wide, work / "misfit", seed=3)

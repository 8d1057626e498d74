"""A second instance started with plain uvicorn: own data dir, Ollama as the default engine."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.conftest import start_server
from tests.e2e.server import Server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ollama_only(tmp_path_factory: pytest.TempPathFactory, stopped_port: int) -> Iterator[Server]:
    env = {
        "USE_LORA_DEFAULT": "false",
        "LOAD_LOCAL_MODEL": "false",
        "OLLAMA_BASE_URL": f"http://127.0.0.1:{stopped_port}",
        "OLLAMA_TIMEOUT": "3",
    }
    with start_server(tmp_path_factory.mktemp("ollama-only"), env, uvicorn=True) as srv:
        yield srv


def test_ollama_down_without_local_default_is_503_not_500(
    ollama_only: Server, stopped_port: int
) -> None:
    r = httpx.post(f"{ollama_only.url}/ask", json={"query": "What is loraflow?"}, timeout=60)
    assert r.status_code == 503
    assert r.json()["detail"] == f"Ollama unreachable at http://127.0.0.1:{stopped_port}"
    health = httpx.get(f"{ollama_only.url}/health", timeout=30)
    assert health.status_code == 503
    assert health.json()["status"] == "unhealthy"
    assert health.json()["components"]["ollama_service"] is False


def test_switching_to_an_unloaded_local_model_is_503(ollama_only: Server) -> None:
    r = httpx.post(f"{ollama_only.url}/switch_model", json={"use_lora": True}, timeout=30)
    assert r.status_code == 503
    assert "LOAD_LOCAL_MODEL" in r.json()["detail"]


def test_two_instances_with_two_data_dirs_share_nothing(
    ollama_only: Server, server: Server
) -> None:
    r = httpx.post(
        f"{ollama_only.url}/documents",
        files={
            "files": (
                "only-here.md",
                b"# Only here\nThis lives in the second instance.",
                "text/markdown",
            )
        },
        timeout=60,
    )
    assert r.status_code == 200, r.text
    second = {d["source"] for d in httpx.get(f"{ollama_only.url}/documents").json()["documents"]}
    first = {d["source"] for d in httpx.get(f"{server.url}/documents").json()["documents"]}
    assert "only-here.md" in second and "only-here.md" not in first
    assert (ollama_only.data_dir / "loraflow.db").exists()
    assert (server.data_dir / "loraflow.db").exists()

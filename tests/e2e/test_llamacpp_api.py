"""A real server with LOCAL_ENGINE=llamacpp answers the OpenAI API, with and without an adapter."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import llamacpp_env, start_server
from tests.e2e.server import Server
from tests.unit.models.tiny import make_adapter

pytestmark = pytest.mark.integration
pytest.importorskip("llama_cpp")

ADAPTER = "gguf-bot"
ASK = [{"role": "user", "content": "Tell me a short story about a cat."}]


@pytest.fixture(scope="module")
def llama_server(
    tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path, model_cache: Path
) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("llamacpp-server")
    make_adapter(smollm2_dir, data / "lora_adapters" / ADAPTER, seed=1)
    env = llamacpp_env(model_cache, "llamacpp")
    with start_server(data, env) as srv:
        yield srv


@pytest.fixture()
def api(llama_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=llama_server.url, timeout=120) as c:
        yield c


def chat(api: httpx.Client, model: str, **extra: object) -> dict:
    r = api.post("/v1/chat/completions", json={"model": model, "messages": ASK, **extra})
    assert r.status_code == 200, r.text
    return r.json()


def test_chat_completions_answer_with_the_base_model_and_the_adapter(api: httpx.Client) -> None:
    base = chat(api, "bundled:smollm2")
    text = base["choices"][0]["message"]["content"]
    assert "cat" in text.lower()
    assert base["usage"]["prompt_tokens"] > 5 and base["usage"]["completion_tokens"] > 0
    tuned = chat(api, ADAPTER)["choices"][0]["message"]["content"]
    assert tuned != text
    assert chat(api, "bundled:smollm2")["choices"][0]["message"]["content"] == text
    ids = [m["id"] for m in api.get("/v1/models").json()["data"]]
    assert ADAPTER in ids


def test_streamed_chat_equals_the_answer_in_one_piece(api: httpx.Client) -> None:
    whole = chat(api, ADAPTER)["choices"][0]["message"]["content"]
    pieces: list[str] = []
    body = {"model": ADAPTER, "messages": ASK, "stream": True}
    with api.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                delta = json.loads(line[6:])["choices"][0]["delta"]
                pieces.append(delta.get("content") or "")
    assert "".join(pieces) == whole


def test_unknown_model_is_a_404_naming_the_known_ones(api: httpx.Client) -> None:
    r = api.post("/v1/chat/completions", json={"model": "nope", "messages": ASK})
    assert r.status_code == 404
    assert ADAPTER in r.json()["error"]["message"]

"""A real server with LOCAL_ENGINE=hybrid: llama.cpp answers lone requests, /health says so."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import llamacpp_env, start_server
from tests.e2e.server import Server
from tests.unit.models.tiny import make_adapter

pytestmark = pytest.mark.integration
pytest.importorskip("llama_cpp")

ADAPTER = "hybrid-bot"
ASK = [{"role": "user", "content": "Tell me a short story about a cat."}]


@pytest.fixture(scope="module")
def api(
    tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path, model_cache: Path
) -> Iterator[httpx.Client]:
    data = tmp_path_factory.mktemp("hybrid-server")
    make_adapter(smollm2_dir, data / "lora_adapters" / ADAPTER, seed=1)
    env = llamacpp_env(model_cache, "hybrid")
    srv: Server
    with start_server(data, env) as srv, httpx.Client(base_url=srv.url, timeout=120) as c:
        yield c


def _answered(api: httpx.Client) -> str:
    detail = api.get("/health").json()["details"]["local_engine"]
    assert "up to 128 prompt tokens on llama.cpp (1 adapter(s) there" in detail, detail
    return detail


def test_lone_requests_are_answered_by_llamacpp_whole_and_streamed(api: httpx.Client) -> None:
    body = {"model": ADAPTER, "messages": ASK}
    r = api.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    whole = r.json()["choices"][0]["message"]["content"]
    assert r.json()["choices"][0]["finish_reason"] in ("stop", "length")
    pieces: list[str] = []
    with api.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as s:
        assert s.status_code == 200
        for line in s.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                pieces.append(json.loads(line[6:])["choices"][0]["delta"].get("content") or "")
    assert "".join(pieces) == whole  # the same path, the same greedy answer
    base = api.post("/v1/chat/completions", json={**body, "model": "bundled:smollm2"})
    assert base.json()["choices"][0]["message"]["content"] != whole  # the adapter was applied
    assert "3 answered there, 0 batched" in _answered(api)


def test_a_lone_request_with_a_long_prompt_is_answered_by_the_batch(api: httpx.Client) -> None:
    def counts() -> tuple[int, int, int]:
        found = re.search(
            r"(\d+) answered there, (\d+) batched, (\d+) of them lone", _answered(api)
        )
        assert found is not None
        solo, batch, long = found.groups()
        return int(solo), int(batch), int(long)

    before = counts()
    context = "Cats sleep for most of the day and hunt at dusk. " * 30  # ~360 tokens
    body = {"model": ADAPTER, "messages": [{"role": "system", "content": context}, *ASK]}
    r = api.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] > 128
    assert counts() == (before[0], before[1] + 1, before[2] + 1)

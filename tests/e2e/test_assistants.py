"""Assistants over HTTP: CRUD, /ask with `assistant`, `assistant/<name>` through openai."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from tests.e2e.conftest import ADAPTER_NAME
from tests.e2e.server import Server

pytestmark = pytest.mark.integration

ALPHA = "The Alpha project ships its release train every second Tuesday at noon."
BETA = "The Beta project ships its release train on the first Monday of each month."


@pytest.fixture(scope="module")
def bound(server: Server, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Two knowledge bases with competing facts and an assistant bound to the first."""
    folder = tmp_path_factory.mktemp("assistant-docs")
    with httpx.Client(base_url=server.url, timeout=120) as c:
        for name, text in (("alpha-kb", ALPHA), ("beta-kb", BETA)):
            assert c.post("/api/collections", json={"name": name}).status_code == 201
            path = folder / f"{name}.txt"
            path.write_text(text, encoding="utf-8")
            files = [("files", (path.name, path.read_bytes(), "text/plain"))]
            assert c.post(f"/api/collections/{name}/documents", files=files).status_code == 200
        r = c.post(
            "/api/assistants",
            json={
                "name": "alpha-bot",
                "system_prompt": "You answer questions about the Alpha project.",
                "adapter": ADAPTER_NAME,
                "collections": ["alpha-kb"],
                "generation": {"max_new_tokens": 12, "temperature": 0},
            },
        )
        assert r.status_code == 201, r.text
    return "alpha-bot"


def test_ask_as_an_assistant_cites_only_its_own_collection(
    client: httpx.Client, bound: str
) -> None:
    # The question matches the other collection's document best.
    body = {"query": "When does the Beta project ship its release train?", "assistant": bound}
    r = client.post("/ask", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["answer"] and out["assistant"] == bound
    assert (out["model_used"], out["adapter"]) == ("lora", ADAPTER_NAME)
    assert out["usage"]["completion_tokens"] <= 12  # the assistant's generation default
    assert out["source_documents"]
    assert {s["collection"] for s in out["source_documents"]} == {"alpha-kb"}
    assert out["source_documents"][0]["quote"] == ALPHA


def test_ask_with_a_collection_and_the_seed_contract_still_work(client: httpx.Client) -> None:
    r = client.post("/ask", json={"query": "When does Beta ship?", "collection": "beta-kb"})
    assert r.status_code == 200, r.text
    assert r.json()["source_documents"][0]["source"] == "beta-kb.txt"
    plain = client.post("/ask", json={"query": "How do I switch to Ollama?"}).json()
    assert {s["collection"] for s in plain["source_documents"]} == {"default"}


def test_unknown_names_are_404_naming_the_known_ones(client: httpx.Client, bound: str) -> None:
    r = client.post("/ask", json={"query": "hi", "assistant": "ghost"})
    assert r.status_code == 404 and "'alpha-bot'" in r.json()["detail"]
    r = client.post("/ask", json={"query": "hi", "collection": "ghost"})
    assert r.status_code == 404 and "'alpha-kb'" in r.json()["detail"]
    dup = client.post("/api/assistants", json={"name": bound})
    assert dup.status_code == 409
    same = client.patch(f"/api/assistants/{bound}", json={"collections": None, "engine": None})
    assert same.status_code == 200 and same.json()["collections"] == ["alpha-kb"]


def test_openai_client_uses_the_assistant_as_a_model_with_sources(
    server: Server, bound: str
) -> None:
    oai = OpenAI(base_url=f"{server.url}/v1", api_key="unused", timeout=120)
    assert f"assistant/{bound}" in [m.id for m in oai.models.list()]
    resp = oai.chat.completions.create(
        model=f"assistant/{bound}",
        messages=[{"role": "user", "content": "When does the Beta project ship?"}],
    )
    assert resp.choices[0].message.content
    sources = (resp.model_extra or {})["sources"]
    assert sources and {s["collection"] for s in sources} == {"alpha-kb"}
    assert resp.usage is not None and resp.usage.completion_tokens <= 12


def test_deleting_a_collection_in_use_is_refused_unless_forced(
    client: httpx.Client, bound: str, tmp_path: Path
) -> None:
    assert client.post("/api/collections", json={"name": "scratch"}).status_code == 201
    r = client.patch(f"/api/assistants/{bound}", json={"collections": ["alpha-kb", "scratch"]})
    assert r.json()["collections"] == ["alpha-kb", "scratch"]
    refused = client.delete("/api/collections/scratch")
    assert refused.status_code == 409 and "'alpha-bot'" in refused.json()["detail"]
    forced = client.delete("/api/collections/scratch", params={"force": "true"})
    assert forced.json()["detached_assistants"] == [bound]
    after = client.get(f"/api/assistants/{bound}").json()
    assert after["collections"] == ["alpha-kb"]
    assert after["retrieval"]["notices"] == ["collection 'scratch' was deleted"]

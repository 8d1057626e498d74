"""The Ollama-compatible API over HTTP on the shared real server, in Ollama's own shapes."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.e2e.conftest import ADAPTER_NAME

pytestmark = pytest.mark.integration

BASE = "bundled:smollm2"
HELLO = [{"role": "user", "content": "What is a LoRA adapter? Answer in one sentence."}]
GREEDY = {"temperature": 0, "num_predict": 12}


def _lines(response: httpx.Response) -> list[dict]:
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def test_chat_streams_ndjson_by_default(client: httpx.Client) -> None:
    body = {"model": ADAPTER_NAME, "messages": HELLO, "options": GREEDY}
    with client.stream("POST", "/api/chat", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        r.read()
    lines = _lines(r)
    assert all(not line["done"] for line in lines[:-1]) and lines[-1]["done"] is True
    streamed = "".join(line["message"]["content"] for line in lines)
    whole = client.post("/api/chat", json={**body, "stream": False}).json()
    assert whole["done"] is True and whole["message"]["role"] == "assistant"
    assert whole["message"]["content"] == streamed
    assert whole["eval_count"] == lines[-1]["eval_count"] == 12
    assert whole["done_reason"] == "length" and whole["prompt_eval_count"] > 5
    assert whole["model"] == ADAPTER_NAME and whole["created_at"].endswith("Z")


def test_generate_with_system_raw_and_empty_prompt(client: httpx.Client) -> None:
    body = {"model": BASE, "prompt": "Why is the sky blue?", "stream": False, "options": GREEDY}
    out = client.post("/api/generate", json=body).json()
    assert out["response"] and out["done"] is True and out["eval_count"] == 12
    with client.stream("POST", "/api/generate", json={**body, "stream": True}) as r:
        r.read()
    assert "".join(line["response"] for line in _lines(r)) == out["response"]
    raw = client.post("/api/generate", json={**body, "raw": True, "prompt": "1, 2, 3,"}).json()
    assert raw["response"] and raw["response"] != out["response"]
    loaded = client.post("/api/generate", json={"model": BASE}).json()
    assert loaded["done"] is True and loaded["done_reason"] == "load"


def test_tags_show_version(client: httpx.Client) -> None:
    models = client.get("/api/tags").json()["models"]
    names = [m["name"] for m in models]
    assert names[0] == BASE and ADAPTER_NAME in names
    adapter = next(m for m in models if m["name"] == ADAPTER_NAME)
    assert adapter["details"]["parent_model"] == BASE and len(adapter["digest"]) == 64
    shown = client.post("/api/show", json={"model": f"{ADAPTER_NAME}:latest"}).json()
    assert shown["modelfile"].startswith(f"FROM {BASE}") and "ADAPTER" in shown["modelfile"]
    assert client.get("/api/version").json()["version"]


def test_embed(client: httpx.Client) -> None:
    out = client.post("/api/embed", json={"model": BASE, "input": ["a", "b c"]}).json()
    assert len(out["embeddings"]) == 2 and len(out["embeddings"][0]) == 384
    assert out["prompt_eval_count"] == 3
    old = client.post("/api/embeddings", json={"model": BASE, "prompt": "a"}).json()
    assert old["embedding"] == pytest.approx(out["embeddings"][0], abs=1e-5)


def test_errors_in_ollama_shape(client: httpx.Client) -> None:
    r = client.post("/api/chat", json={"model": "llama3", "messages": HELLO})
    assert r.status_code == 404
    assert set(r.json()) == {"error"} and "'llama3'" in r.json()["error"]
    assert ADAPTER_NAME in r.json()["error"]
    r = client.post("/api/chat", json={"model": BASE, "messages": "hi"})
    assert r.status_code == 400 and "messages" in r.json()["error"]
    bad = {"model": BASE, "messages": [{"role": "tool", "content": "x"}], "stream": False}
    r = client.post("/api/chat", json=bad)
    assert r.status_code == 400 and "'tool'" in r.json()["error"]
    r = client.post("/api/embed", json={"model": "nomic-embed-text", "input": "x"})
    assert r.status_code == 404 and "bundled:minilm" in r.json()["error"]


def test_rag_option(client: httpx.Client) -> None:
    ask = [{"role": "user", "content": "How do I switch to Ollama without restarting?"}]
    body = {"model": BASE, "messages": ask, "rag": True, "options": GREEDY}
    with client.stream("POST", "/api/chat", json=body) as r:
        r.read()
    last = _lines(r)[-1]
    assert last["done"] is True and last["sources"][0]["source"]

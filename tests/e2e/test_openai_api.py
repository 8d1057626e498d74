"""The OpenAI-compatible API over HTTP on the shared real server (SmolLM2 + `support-bot`)."""

from __future__ import annotations

import base64
import json
import shutil
import time

import httpx
import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from tests.e2e.conftest import ADAPTER_NAME
from tests.e2e.server import Server

pytestmark = pytest.mark.integration

BASE = "bundled:smollm2"
HELLO = [{"role": "user", "content": "What is a LoRA adapter? Answer in one sentence."}]


def _chat(client: httpx.Client, **body) -> httpx.Response:
    return client.post("/v1/chat/completions", json={"messages": HELLO, **body})


def _sse(response: httpx.Response) -> list[dict]:
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_models_lists_base_adapters_and_embedder(client: httpx.Client) -> None:
    data = client.get("/v1/models").json()
    assert data["object"] == "list"
    ids = [m["id"] for m in data["data"]]
    assert ids[0] == BASE and ADAPTER_NAME in ids and "bundled:minilm" in ids
    adapter = next(m for m in data["data"] if m["id"] == ADAPTER_NAME)
    assert adapter["parent"] == BASE and adapter["kind"] == "adapter"
    assert client.get(f"/v1/models/{ADAPTER_NAME}").json()["id"] == ADAPTER_NAME


def test_model_picks_base_or_adapter_per_request(client: httpx.Client) -> None:
    base = _chat(client, model=BASE, temperature=0).json()
    lora = _chat(client, model=ADAPTER_NAME, temperature=0).json()
    assert base["object"] == "chat.completion" and base["model"] == BASE
    assert lora["model"] == ADAPTER_NAME
    text_base = base["choices"][0]["message"]["content"]
    text_lora = lora["choices"][0]["message"]["content"]
    assert text_base and text_lora and text_base != text_lora
    usage = base["usage"]
    assert usage["prompt_tokens"] > 5 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert base["choices"][0]["finish_reason"] in ("stop", "length")
    # The same request again gives the same greedy answer.
    again = _chat(client, model=BASE, temperature=0).json()
    assert again["choices"][0]["message"]["content"] == text_base


def test_n_max_tokens_stop_and_seed(client: httpx.Client) -> None:
    short = _chat(client, model=BASE, temperature=0, max_tokens=5, n=2).json()
    assert [c["index"] for c in short["choices"]] == [0, 1]
    assert all(c["finish_reason"] == "length" for c in short["choices"])
    assert short["usage"]["completion_tokens"] == 10
    full = _chat(client, model=BASE, temperature=0).json()["choices"][0]["message"]["content"]
    words = full.split()
    stop = words[len(words) // 2]
    cut = _chat(client, model=BASE, temperature=0, stop=stop).json()["choices"][0]
    assert cut["message"]["content"] == full[: full.find(stop)]
    assert cut["finish_reason"] == "stop"
    sampled = {"model": BASE, "temperature": 1.0, "top_p": 0.9, "seed": 5, "n": 2}
    one, two = _chat(client, **sampled).json(), _chat(client, **sampled).json()
    assert one["choices"] == two["choices"]


def test_stream_matches_the_whole_answer(client: httpx.Client) -> None:
    full = _chat(client, model=ADAPTER_NAME, temperature=0).json()
    body = {"model": ADAPTER_NAME, "temperature": 0, "stream": True}
    body["stream_options"] = {"include_usage": True}
    with client.stream("POST", "/v1/chat/completions", json={"messages": HELLO, **body}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        r.read()
    chunks = _sse(r)
    assert chunks[0]["object"] == "chat.completion.chunk"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == full["choices"][0]["message"]["content"]
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finish[-1] == full["choices"][0]["finish_reason"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == full["usage"]


def test_errors_in_openai_shape(client: httpx.Client) -> None:
    r = _chat(client, model="gpt-4o")
    assert r.status_code == 404
    err = r.json()["error"]
    msg = err["message"]
    assert "'gpt-4o'" in msg and ADAPTER_NAME in msg and BASE in msg
    assert err["code"] == "model_not_found" and set(err) == {"message", "type", "param", "code"}
    r = _chat(client, model=BASE, temperature=-1)
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"
    r = client.post("/v1/chat/completions", json={"model": BASE, "messages": []})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = _chat(client, model=BASE, stop=["  "])
    assert r.status_code == 400 and "stop" in r.json()["error"]["message"]
    huge = [{"role": "user", "content": "word " * 9000}]
    r = client.post("/v1/chat/completions", json={"model": BASE, "messages": huge})
    assert r.status_code == 400 and "context holds 8192" in r.json()["error"]["message"]
    r = _chat(client, model="nope", stream=True)
    assert r.status_code == 404 and "error" in r.json()


def test_completions(client: httpx.Client) -> None:
    body = {"model": BASE, "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0}
    out = client.post("/v1/completions", json=body).json()
    assert out["object"] == "text_completion"
    text = out["choices"][0]["text"]
    assert text and out["usage"]["completion_tokens"] <= 6
    echo = client.post("/v1/completions", json={**body, "echo": True}).json()
    assert echo["choices"][0]["text"] == body["prompt"] + text
    two = client.post("/v1/completions", json={**body, "prompt": ["a", "b"]}).json()
    assert [c["index"] for c in two["choices"]] == [0, 1]
    with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        r.read()
    assert "".join(c["choices"][0]["text"] for c in _sse(r)) == text


def test_embeddings_float_and_base64(client: httpx.Client) -> None:
    texts = ["LoRA adapters are small.", "FAISS stores vectors."]
    out = client.post("/v1/embeddings", json={"model": "bundled:minilm", "input": texts}).json()
    vecs = np.array([d["embedding"] for d in out["data"]])
    assert vecs.shape == (2, 384) and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-4)
    assert out["usage"]["prompt_tokens"] > 0
    packed = client.post(
        "/v1/embeddings", json={"model": BASE, "input": texts[0], "encoding_format": "base64"}
    ).json()
    decoded = np.frombuffer(base64.b64decode(packed["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, vecs[0], atol=1e-5)
    r = client.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": "x"})
    assert r.status_code == 404 and "bundled:minilm" in r.json()["error"]["message"]
    r = client.post("/v1/embeddings", json={"model": BASE, "input": [[1, 2, 3]]})
    assert r.status_code == 400 and "check_embedding_ctx_length" in r.json()["error"]["message"]


def test_rag_as_a_model_option(client: httpx.Client) -> None:
    ask = [{"role": "user", "content": "How do I switch to Ollama without restarting?"}]
    out = client.post(
        "/v1/chat/completions",
        json={"model": ADAPTER_NAME, "messages": ask, "temperature": 0, "rag": True},
    ).json()
    assert out["choices"][0]["message"]["content"]
    assert out["sources"] and {"source", "content", "index"} <= set(out["sources"][0])
    body = {"model": BASE, "messages": ask, "temperature": 0, "rag": True, "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        r.read()
    chunks = _sse(r)
    assert chunks[0]["sources"] and "".join(
        c["choices"][0]["delta"].get("content", "") for c in chunks
    )


def _flipped_copy(server: Server, name: str) -> None:
    """A second version of support-bot whose LoRA B weights are negated (another output)."""
    src = server.data_dir / "lora_adapters" / ADAPTER_NAME
    dest = server.data_dir / "incoming" / name
    shutil.copytree(src, dest)
    weights = load_file(dest / "adapter_model.safetensors")
    flipped = {k: (-v if "lora_B" in k else v) for k, v in weights.items()}
    save_file(flipped, dest / "adapter_model.safetensors")


def test_load_reload_and_unload_adapters(client: httpx.Client, server: Server) -> None:
    src = server.data_dir / "lora_adapters" / ADAPTER_NAME
    r = client.post("/v1/load_lora_adapter", json={"lora_name": "copy", "lora_path": str(src)})
    assert r.status_code == 200 and "copy" in r.text
    assert "copy" in [m["id"] for m in client.get("/v1/models").json()["data"]]
    same = _chat(client, model="copy", temperature=0).json()["choices"][0]["message"]
    orig = _chat(client, model=ADAPTER_NAME, temperature=0).json()["choices"][0]["message"]
    assert same == orig
    again = client.post("/v1/load_lora_adapter", json={"lora_name": "copy", "lora_path": str(src)})
    assert again.status_code == 400 and "'copy'" in again.json()["error"]["message"]
    _flipped_copy(server, "v2")
    v2 = str(server.data_dir / "incoming" / "v2")
    body = {"lora_name": "copy", "lora_path": v2, "load_inplace": True}
    assert client.post("/v1/load_lora_adapter", json=body).status_code == 200
    changed = _chat(client, model="copy", temperature=0).json()["choices"][0]["message"]
    assert changed != orig
    r = client.post("/v1/unload_lora_adapter", json={"lora_name": "copy"})
    assert r.status_code == 200
    assert _chat(client, model="copy").status_code == 404
    r = client.post("/v1/unload_lora_adapter", json={"lora_name": "copy"})
    assert r.status_code == 404


def test_adapter_paths_outside_the_data_dir_are_refused(
    client: httpx.Client, tmp_path, server: Server
) -> None:
    outside = tmp_path / "evil"
    shutil.copytree(server.data_dir / "lora_adapters" / ADAPTER_NAME, outside)
    for path in (str(outside), "../../../etc", "/etc"):
        r = client.post("/v1/load_lora_adapter", json={"lora_name": "evil", "lora_path": path})
        assert r.status_code == 400, path
        assert "outside" in r.json()["error"]["message"]
    pickled = server.data_dir / "incoming" / "pickled"
    pickled.mkdir(parents=True)
    shutil.copy(outside / "adapter_config.json", pickled)
    (pickled / "adapter_model.bin").write_bytes(b"not really a pickle")
    r = client.post("/v1/load_lora_adapter", json={"lora_name": "p", "lora_path": str(pickled)})
    assert r.status_code == 400 and "safetensors" in r.json()["error"]["message"]
    r = client.post("/v1/load_lora_adapter", json={"lora_name": "../x", "lora_path": str(pickled)})
    assert r.status_code == 400 and "lora_name" in r.json()["error"]["message"]


def test_client_disconnect_stops_generation(client: httpx.Client, server: Server) -> None:
    count = [{"role": "user", "content": "Count from 1 to 2000, separated by commas."}]
    # ignore_eos: left alone, this request would decode all 3000 tokens (minutes here).
    body = {"model": BASE, "messages": count, "temperature": 0, "max_tokens": 3000}
    body["ignore_eos"] = True
    with httpx.Client(base_url=server.url, timeout=60) as other:
        with other.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
            lines = r.iter_lines()
            received = [next(lines) for _ in range(6)]
            assert client.get("/v1/batch").json()["running"] == 1
        assert any("content" in line for line in received)
    # The stream was closed after a few tokens; the row leaves within a few decode steps.
    deadline = time.monotonic() + 60
    while client.get("/v1/batch").json()["running"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert client.get("/v1/batch").json() == {
        "batching": True,
        "max_batch_size": 16,
        "running": 0,
        "waiting": 0,
    }


def test_a_registered_adapter_is_listed_before_its_first_use(
    client: httpx.Client, server: Server
) -> None:
    src = server.data_dir / "lora_adapters" / ADAPTER_NAME
    fresh = shutil.copytree(src, server.data_dir / "incoming" / "fresh-bot")
    r = client.post("/api/adapters/register", json={"path": str(fresh)})
    assert r.status_code == 201, r.text
    listed = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert "fresh-bot" in listed, (r.text, listed)
    assert listed["fresh-bot"]["kind"] == "adapter" and listed["fresh-bot"]["attached"] is False
    assert listed["fresh-bot"]["parent"] == BASE
    assert "fresh-bot" in [m["name"] for m in client.get("/api/tags").json()["models"]]
    try:
        assert _chat(client, model="fresh-bot", max_tokens=2).status_code == 200
        listed = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
        assert listed["fresh-bot"]["attached"] is True
    finally:
        # The server is shared with later test modules: leave it with the adapters it had.
        client.post("/v1/unload_lora_adapter", json={"lora_name": "fresh-bot"})
        assert client.delete("/api/adapters/fresh-bot").status_code == 200
    assert "fresh-bot" not in [m["id"] for m in client.get("/v1/models").json()["data"]]


def test_compare_answers_with_the_base_and_adapters_side_by_side(client: httpx.Client) -> None:
    body = {"prompt": "Say hello.", "adapters": [ADAPTER_NAME], "temperature": 0, "max_tokens": 8}
    r = client.post("/api/compare", json=body)
    assert r.status_code == 200, r.text
    answers = r.json()["answers"]
    assert [(a["model"], a["kind"]) for a in answers] == [(BASE, "base"), (ADAPTER_NAME, "adapter")]
    # Each answer is the one that model gives alone to the same request.
    for a in answers:
        alone = client.post(
            "/v1/chat/completions",
            json={
                "model": a["model"],
                "messages": [{"role": "user", "content": "Say hello."}],
                "temperature": 0,
                "max_tokens": 8,
            },
        ).json()
        assert a["text"] == alone["choices"][0]["message"]["content"]
        assert a["completion_tokens"] == alone["usage"]["completion_tokens"] > 0
        assert a["seconds"] > 0 and a["error"] is None
    assert answers[0]["text"] != answers[1]["text"]
    assert r.json()["seconds"] == max(a["seconds"] for a in answers)

    # Refused before anything is generated, with the reason.
    unknown = client.post("/api/compare", json={"prompt": "x", "adapters": ["nope"]})
    assert unknown.status_code == 404 and "'nope'" in unknown.json()["detail"]
    four = client.post("/api/compare", json={"prompt": "x", "adapters": ["a", "b", "c", "d"]})
    assert four.status_code == 422
    both = client.post("/api/compare", json={"prompt": "x", "messages": [HELLO[0]]})
    assert both.status_code == 422 and "either" in both.json()["detail"]
    alone = client.post("/api/compare", json={"prompt": "x", "include_base": False})
    assert alone.status_code == 422 and "nothing to compare" in alone.json()["detail"]

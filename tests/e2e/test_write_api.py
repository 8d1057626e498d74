"""The writing studio over HTTP: memory used/dropped, continue, streaming, bad input and
concurrent streamed and plain requests all finishing."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.e2e.conftest import ADAPTER_NAME

pytestmark = pytest.mark.integration


@pytest.fixture()
def project(client: httpx.Client) -> str:
    name = f"write-{uuid.uuid4().hex[:6]}"
    pid = client.post("/api/memory/projects", json={"name": name}).json()["id"]
    entries = [
        {"kind": "world", "title": "Rules", "content": "Magic costs memories.", "always_on": True},
        {"kind": "character", "title": "Mara", "content": "Mara is a smuggler.", "importance": 9},
        {"kind": "plot_event", "title": "Storm", "content": "storm " * 200, "keywords": ["storm"]},
    ]
    for e in entries:
        assert client.post(f"/api/memory/projects/{pid}/entries", json=e).status_code == 201
    return pid


def _events(response: httpx.Response) -> list[dict]:
    return [json.loads(line) for line in response.iter_lines() if line.strip()]


def test_write_reports_memory_used_and_dropped_and_stores_the_passage(
    client: httpx.Client, project: str
) -> None:
    body = {
        "project": project,
        "prompt": "Mara looked at the storm over the harbour.",
        "engine": "local",
        "memory_budget": 60,
        "temperature": 0,
        "repetition_penalty": 1.2,
        "max_tokens": 12,
    }
    r = client.post("/api/write", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["text"].strip() and out["engine"] == "local" and out["model_used"] == "base"
    assert [u["title"] for u in out["memory"]["used"]] == ["Rules", "Mara"]
    assert [(d["title"], d["dropped_for"]) for d in out["memory"]["dropped"]] == [
        ("Storm", "budget")
    ]
    assert out["passage_id"] is not None and out["usage"]["completion_tokens"] > 0
    story = client.get(f"/api/memory/projects/{project}/story").json()
    assert story["text"] == body["prompt"] + out["text"]

    # "continue" picks up the stored story; a second client sees the same history.
    more = client.post(
        "/api/write", json={"project": project, "mode": "continue", "engine": "local"}
    )
    assert more.status_code == 200, more.text
    with httpx.Client(base_url=str(client.base_url)) as other:
        seen = other.get(f"/api/memory/projects/{project}/story").json()
    assert len(seen["passages"]) == 2
    assert seen["text"] == body["prompt"] + out["text"] + more.json()["text"]


def test_memory_off_and_adapter_choice(client: httpx.Client, project: str) -> None:
    body = {"project": project, "prompt": "Mara ran.", "use_memory": False, "save": False}
    r = client.post("/api/write", json={**body, "adapter": ADAPTER_NAME})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["memory"] is None and out["adapter"] == ADAPTER_NAME and out["model_used"] == "lora"
    assert out["passage_id"] is None


def test_bad_input_is_rejected_clearly(client: httpx.Client, project: str) -> None:
    def post(**body: object) -> httpx.Response:
        return client.post("/api/write", json={"prompt": "Once", "engine": "local", **body})

    r = post(stop=["", "END"])
    assert r.status_code == 422 and "stop string '' is empty" in r.json()["detail"]
    r = post(stop=["   "])
    assert r.status_code == 422
    r = post(mode="continue")
    assert r.status_code == 422 and "needs a project" in r.json()["detail"]
    r = post(prompt="", project=None)
    assert r.status_code == 422 and "prompt is empty" in r.json()["detail"]
    r = post(adapter="no-such-adapter")
    assert r.status_code == 404 and ADAPTER_NAME in r.json()["detail"]
    r = post(project=f"missing-{uuid.uuid4().hex}")
    assert r.status_code == 404
    assert post(temperature=-1).status_code == 422
    assert post(top_p=0).status_code == 422
    assert post(repetition_penalty=0).status_code == 422
    # Stream errors before the first byte are plain HTTP errors too.
    r = client.post("/api/write/stream", json={"prompt": "x", "stop": [""]})
    assert r.status_code == 422


def test_streaming_sends_memory_then_text_then_done(client: httpx.Client, project: str) -> None:
    body = {"project": project, "prompt": "Mara opened the door.", "engine": "local"}
    with client.stream("POST", "/api/write/stream", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        events = _events(r)
    assert events[0]["type"] == "memory"
    assert [u["title"] for u in events[0]["memory"]["used"]][:2] == ["Rules", "Mara"]
    texts = [e["text"] for e in events if e["type"] == "text"]
    done = events[-1]
    assert done["type"] == "done" and texts and done["text"] == "".join(texts)
    assert done["passage_id"] is not None


def test_ollama_down_is_an_error_not_a_hang(client: httpx.Client) -> None:
    r = client.post("/api/write", json={"prompt": "Once", "engine": "ollama"})
    assert r.status_code == 503 and "Ollama unreachable" in r.json()["detail"]
    with client.stream("POST", "/api/write/stream", json={"prompt": "x", "engine": "ollama"}) as s:
        events = _events(s)
    assert events[-1]["type"] == "error" and "Ollama unreachable" in events[-1]["detail"]


def test_concurrent_streamed_and_plain_requests_all_finish(
    client: httpx.Client, project: str
) -> None:
    url = str(client.base_url)

    def plain(i: int) -> str:
        with httpx.Client(base_url=url, timeout=300) as c:
            body = {"project": project, "prompt": f"Scene {i}: Mara", "engine": "local"}
            if i % 2:
                body["adapter"] = ADAPTER_NAME
            r = c.post("/api/write", json=body)
            assert r.status_code == 200, r.text
            return r.json()["text"]

    def streamed(i: int) -> str:
        with httpx.Client(base_url=url, timeout=300) as c:
            body = {"project": project, "mode": "continue", "prompt": f" Part {i}."}
            body["engine"] = "local"
            with c.stream("POST", "/api/write/stream", json=body) as r:
                assert r.status_code == 200
                events = _events(r)
            assert events[-1]["type"] == "done", events[-1]
            return events[-1]["text"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        jobs = [pool.submit(plain, i) for i in range(4)]
        jobs += [pool.submit(streamed, i) for i in range(4)]
        results = [j.result(timeout=300) for j in jobs]
    assert len(results) == 8
    story = client.get(f"/api/memory/projects/{project}/story").json()
    assert len(story["passages"]) == 8

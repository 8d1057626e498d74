"""The first user journey against the real server: ask with sources, switch models, upload."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.e2e.conftest import ADAPTER_NAME

pytestmark = pytest.mark.integration


def _ask(client: httpx.Client, **body: object) -> httpx.Response:
    return client.post("/ask", json=body)


def test_sample_knowledge_base_is_ingested_on_first_start(client: httpx.Client) -> None:
    docs = client.get("/documents").json()
    sources = {d["source"] for d in docs["documents"]}
    assert {"overview.md", "retrieval.md", "models-and-adapters.md"} <= sources
    assert docs["count"] == len(sources)


def test_ask_answers_with_sources_from_the_right_document(client: httpx.Client) -> None:
    r = _ask(client, query="How large are the chunks and how much do they overlap?")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["answer"].strip()
    assert body["source_documents"][0]["source"] == "retrieval.md"
    assert any("800 characters" in s["content"] for s in body["source_documents"])
    assert all(s["score"] > 0 for s in body["source_documents"])
    assert body["model_used"] == "lora" and body["adapter"] == ADAPTER_NAME
    assert body["processing_time"] > 0


def _streamed(client: httpx.Client, **body: object) -> list[dict]:
    with client.stream("POST", "/ask", json={**body, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        return [json.loads(line) for line in r.iter_lines() if line.strip()]


def test_ask_streams_sources_then_text_then_usage(client: httpx.Client) -> None:
    q = {"query": "How large are the chunks?", "temperature": 0, "max_new_tokens": 24}
    whole = _ask(client, **q).json()
    events = _streamed(client, **q)
    head, pieces, done = events[0], events[1:-1], events[-1]
    assert head["type"] == "sources" and head["source_documents"] == whole["source_documents"]
    assert (head["engine"], head["adapter"]) == (whole["engine"], whole["adapter"])
    assert len(pieces) > 1 and {e["type"] for e in pieces} == {"text"}
    # The same greedy answer as the one-piece response, token by token.
    assert "".join(e["text"] for e in pieces).strip() == whole["answer"]
    assert done["type"] == "done" and done["usage"] == whole["usage"]
    assert done["processing_time"] > 0


def test_ask_stream_refuses_bad_input_before_streaming(client: httpx.Client) -> None:
    r = client.post("/ask", json={"query": "  ", "stream": True})
    assert r.status_code == 422 and "detail" in r.json()


def test_health_reports_each_component_and_degrades_without_ollama(client: httpx.Client) -> None:
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "degraded"
    assert body["components"] == {
        "rag_handler": True,
        "vector_store": True,
        "lora_model": True,
        "ollama_service": False,
    }
    assert "unreachable" in body["details"]["ollama_service"].lower()
    # The local model answers now: the absent Ollama is optional, and said so.
    optional = body["details"]["optional"]
    assert "only needed for use_lora=false" in optional["ollama_service"]
    assert "lora_model" not in optional


def test_model_info_has_the_seed_fields(client: httpx.Client, server) -> None:
    info = client.get("/model_info").json()
    for key in (
        "base_model",
        "lora_model_path",
        "lora_exists",
        "using_lora",
        "cache_dir",
        "vector_store_path",
        "embedding_model",
    ):
        assert key in info
    assert info["base_model"] == "bundled:smollm2"
    assert info["lora_exists"] is True
    assert info["adapters"] == [ADAPTER_NAME]
    assert info["vector_store_path"].startswith(str(server.data_dir))


def test_switch_between_adapter_base_and_ollama(client: httpx.Client) -> None:
    q = {"query": "What does config-check do?", "temperature": 0, "max_new_tokens": 16}
    try:
        r = client.post("/switch_model", json={"engine": "local", "adapter": None})
        assert r.status_code == 200 and r.json()["model_used"] == "base"
        base = _ask(client, **q).json()
        assert base["model_used"] == "base"
        assert client.get("/model_info").json()["using_lora"] is False

        r = client.post("/switch_model", json={"adapter": ADAPTER_NAME})
        assert r.json()["using_lora"] is True
        lora = _ask(client, **q).json()
        assert lora["model_used"] == "lora"
        # The adapter has non-zero weights: the same greedy request gives another answer.
        assert lora["answer"] != base["answer"]

        r = client.post("/switch_model", json={"use_lora": False})
        assert r.status_code == 200 and r.json()["engine"] == "ollama"
        # Ollama is down and the local model is the default: answered locally, and said so.
        fb = _ask(client, **q).json()
        assert fb["model_used"] in {"lora", "base"}
        assert "Ollama unreachable at http://127.0.0.1:" in fb["fallback"]
        assert client.get("/health").json()["status"] == "degraded"
    finally:
        client.post("/switch_model", json={"use_lora": True})


def test_unknown_adapter_is_404_naming_known_ones(client: httpx.Client) -> None:
    r = client.post("/switch_model", json={"adapter": "nope"})
    assert r.status_code == 404
    assert "'nope'" in r.json()["detail"] and ADAPTER_NAME in r.json()["detail"]
    r = _ask(client, query="hello", adapter="nope")
    assert r.status_code == 404 and ADAPTER_NAME in r.json()["detail"]


@pytest.mark.parametrize("query", ["", "   ", "x" * 4001])
def test_empty_or_oversized_query_is_422(client: httpx.Client, query: str) -> None:
    r = _ask(client, query=query)
    assert r.status_code == 422
    assert "query" in r.json()["detail"]


def test_empty_stop_string_is_rejected(client: httpx.Client) -> None:
    r = _ask(client, query="hello", stop=[""])
    assert r.status_code == 422 and "stop" in r.json()["detail"]


def test_upload_then_ask_then_delete(client: httpx.Client) -> None:
    text = (
        "The Zorblax protocol was invented by Mira Okafor in 2019. "
        "It synchronises lighthouse beacons over long-wave radio."
    )
    r = client.post("/documents", files={"files": ("zorblax.txt", text.encode(), "text/plain")})
    assert r.status_code == 200, r.text
    added = r.json()["added"]
    assert [d["source"] for d in added] == ["zorblax.txt"]
    ask = _ask(client, query="Who invented the Zorblax protocol?").json()
    assert ask["source_documents"][0]["source"] == "zorblax.txt"

    r = client.delete(f"/documents/{added[0]['doc_id']}")
    assert r.status_code == 200
    sources = {d["source"] for d in client.get("/documents").json()["documents"]}
    assert "zorblax.txt" not in sources
    assert client.delete(f"/documents/{added[0]['doc_id']}").status_code == 404


def test_bad_uploads_are_refused_and_leave_the_store_unchanged(client: httpx.Client) -> None:
    before = client.get("/documents").json()["count"]
    r = client.post("/documents", files={"files": ("tool.exe", b"MZ\x00\x01", "application/x")})
    assert r.status_code == 415 and ".exe" in r.json()["detail"]
    r = client.post(
        "/documents", files={"files": ("broken.pdf", b"%PDF-1.4 garbage", "application/pdf")}
    )
    assert r.status_code == 415 and "broken.pdf" in r.json()["detail"]
    big = b"a" * (1024 * 1024 + 10)
    r = client.post("/documents", files={"files": ("big.txt", big, "text/plain")})
    assert r.status_code == 413 and "MAX_UPLOAD_MB" in str(r.json())
    r = client.post(
        "/documents", files={"files": ("../../etc/evil.txt", b"hi there", "text/plain")}
    )
    assert r.status_code == 200
    assert r.json()["added"][0]["source"] == "evil.txt"
    client.delete(f"/documents/{r.json()['added'][0]['doc_id']}")
    assert client.get("/documents").json()["count"] == before


def test_openapi_documents_the_routes(client: httpx.Client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/ask", "/switch_model", "/model_info", "/health", "/documents"):
        assert p in paths


def test_metrics_count_requests_by_route_and_report_live_gauges(client: httpx.Client) -> None:
    client.get("/model_info")
    client.post("/switch_model", json={"adapter": "missing-one"})  # a 404
    text = client.get("/metrics").text
    assert 'loraflow_http_requests_total{method="GET",route="/model_info",status="200"}' in text
    assert 'route="/switch_model",status="404"' in text
    assert "loraflow_http_request_duration_seconds_bucket" in text
    assert "loraflow_adapters_loaded 1.0" in text
    assert 'loraflow_generation_queue{state="running"}' in text
    # Raw paths never become labels (no cardinality explosion from ids).
    client.delete("/documents/abc123")
    assert "abc123" not in client.get("/metrics").text


def test_cli_status_sees_the_running_server(server, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from loraflow.cli import app

    monkeypatch.setenv("LORAFLOW_DATA_DIR", str(server.data_dir))
    monkeypatch.setenv("API_PORT", str(server.port))
    r = CliRunner().invoke(app, ["status"])
    assert r.exit_code == 0, r.output
    assert f"{server.url} up" in r.output and ADAPTER_NAME in r.output

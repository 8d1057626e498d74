"""REMOTE_BACKEND=openai for real: one loraflow serves /v1 as "vLLM", a second one answers
through it (use_lora=false, /switch_model, remote/<name> models), then loses it."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ADAPTER_NAME, make_adapter
from tests.e2e.server import Server, cli_argv, free_port

pytestmark = pytest.mark.integration

BASE = "bundled:smollm2"
# The "vLLM" wants this bearer key; it must reach it and never show up anywhere else.
KEY = "sk-remote-test-7f3a9c"
# Small prompts and answers: each generation also crosses a second server.
QUESTION = {
    "query": "What does config-check do?",
    "temperature": 0,
    "max_new_tokens": 8,
    "top_k": 1,
}
HELLO = [{"role": "user", "content": "What is a LoRA adapter? Answer in one sentence."}]


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path, model_cache: Path
) -> Iterator[tuple[Server, Server]]:
    """(vllm, app): a loraflow with an adapter and API_KEY as the vLLM, and one using it."""
    vllm_dir = tmp_path_factory.mktemp("vllm-data")
    make_adapter(smollm2_dir, vllm_dir / "lora_adapters" / ADAPTER_NAME)
    common = {
        "CACHE_DIR": str(model_cache),
        "MAX_NEW_TOKENS": "24",
        "TEMPERATURE": "0",
        "ENABLE_UI": "false",
    }
    vport, aport = free_port(), free_port()
    vllm = Server(
        vllm_dir,
        {**common, "API_KEY": KEY, "AUTO_INGEST_SAMPLE": "false"},
        cli_argv("serve", "--port", str(vport)),
        vport,
    )
    app = Server(
        tmp_path_factory.mktemp("app-data"),
        {
            **common,
            "REMOTE_BACKEND": "openai",
            "OPENAI_BASE_URL": f"{vllm.url}/v1/",
            "OPENAI_MODEL": BASE,
            "OPENAI_API_KEY": KEY,
            "OPENAI_TIMEOUT": "300",
            "USE_LORA_DEFAULT": "true",
        },
        cli_argv("serve", "--port", str(aport)),
        aport,
    )
    try:
        vllm.wait_ready()
        app.wait_ready()
        yield vllm, app
    finally:
        app.stop()
        vllm.stop()


@pytest.fixture(scope="module")
def app(pair: tuple[Server, Server]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=pair[1].url, timeout=600) as c:
        yield c


def _vllm_chat(vllm: Server, model: str) -> str:
    body = {"model": model, "messages": HELLO, "temperature": 0, "max_tokens": 8}
    r = httpx.post(
        f"{vllm.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=600,
    )
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def test_health_and_model_info_name_the_remote_server(
    app: httpx.Client, pair: tuple[Server, Server]
) -> None:
    vllm = pair[0]
    health = app.get("/health").json()
    assert health["components"]["ollama_service"] is True
    details = health["details"]
    assert details["remote_backend"] == "openai"
    assert details["remote_base_url"] == f"{vllm.url}/v1"
    assert details["ollama_service"] == f"{vllm.url}/v1 serves {BASE}"
    info = app.get("/model_info").json()
    assert (info["remote_backend"], info["remote_model"]) == ("openai", BASE)
    assert KEY not in json.dumps(info) and KEY not in json.dumps(health)


def test_ask_without_lora_answers_through_the_remote_server(app: httpx.Client) -> None:
    remote = app.post("/ask", json={**QUESTION, "use_lora": False}).json()
    assert remote["model_used"] == "openai" and remote["engine"] == "openai"
    assert remote["fallback"] is None and remote["answer"]
    assert remote["source_documents"] and remote["usage"]["completion_tokens"] > 0
    # The "vLLM" runs the same SmolLM2 greedily on the same cited prompt: the same answer.
    local = app.post("/ask", json={**QUESTION, "use_lora": True}).json()
    assert local["engine"] == "local" and local["answer"] == remote["answer"]


def test_switch_model_to_the_remote_server_and_its_adapter(app: httpx.Client, pair) -> None:
    vllm = pair[0]
    try:
        r = app.post("/switch_model", json={"use_lora": False})
        assert r.status_code == 200, r.text
        assert r.json()["engine"] == "openai" and r.json()["adapter"] is None
        assert f"at {vllm.url}/v1" in r.json()["message"]
        base = app.post("/ask", json=QUESTION).json()
        assert base["model_used"] == "openai" and base["adapter"] is None

        r = app.post("/switch_model", json={"engine": "remote", "adapter": ADAPTER_NAME})
        assert r.status_code == 200, r.text
        assert r.json() | {"message": ""} == {
            "message": "",
            "using_lora": True,
            "engine": "openai",
            "adapter": ADAPTER_NAME,
            "model_used": "openai",
        }
        assert app.get("/model_info").json()["adapter"] == ADAPTER_NAME
        lora = app.post("/ask", json=QUESTION).json()
        assert lora["engine"] == "openai" and lora["adapter"] == ADAPTER_NAME
        # The remote adapter has non-zero weights: the same greedy request answers otherwise.
        assert lora["answer"] != base["answer"]

        r = app.post("/switch_model", json={"engine": "openai", "adapter": "nope"})
        assert r.status_code == 404
        assert "'nope'" in r.json()["detail"] and ADAPTER_NAME in r.json()["detail"]
        assert f"{vllm.url}/v1" in r.json()["detail"]
    finally:
        app.post("/switch_model", json={"engine": "local"})


def test_compatible_apis_address_remote_models_by_name(app: httpx.Client, pair) -> None:
    vllm = pair[0]
    ids = [m["id"] for m in app.get("/v1/models").json()["data"]]
    assert f"remote/{BASE}" in ids and f"remote/{ADAPTER_NAME}" in ids
    model = f"remote/{ADAPTER_NAME}"
    body = {"model": model, "messages": HELLO, "temperature": 0, "max_tokens": 8}
    out = app.post("/v1/chat/completions", json=body).json()
    text = out["choices"][0]["message"]["content"]
    assert out["model"] == model and text == _vllm_chat(vllm, ADAPTER_NAME)
    assert out["usage"]["completion_tokens"] == 8
    with app.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        events = [ln[6:] for ln in r.iter_lines() if ln.startswith("data: ")]
    pieces = [json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1]]
    assert "".join(pieces) == text
    # Ollama's API takes the same names.
    tags = [m["name"] for m in app.get("/api/tags").json()["models"]]
    assert f"remote/{ADAPTER_NAME}" in tags
    shown = app.post("/api/show", json={"model": model}).json()
    assert shown["modelfile"] == f"FROM remote/{BASE}\nADAPTER {ADAPTER_NAME}\n"
    chat = {"model": f"remote/{BASE}", "messages": HELLO, "stream": False}
    chat["options"] = {"temperature": 0, "num_predict": 8}
    ollama = app.post("/api/chat", json=chat).json()
    assert ollama["message"]["content"] == _vllm_chat(vllm, BASE)

    r = app.post("/v1/chat/completions", json={**body, "model": "remote/nope"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert f"{vllm.url}/v1" in r.json()["error"]["message"]


def test_an_assistant_binds_the_remote_servers_lora_module(app: httpx.Client) -> None:
    spec = {
        "name": "remote-lora",
        "engine": "openai",
        "adapter": ADAPTER_NAME,
        "generation": {"temperature": 0, "max_new_tokens": 8},
    }
    r = app.post("/api/assistants", json=spec)
    assert r.status_code == 201, r.text
    try:
        asked = app.post("/ask", json={"query": QUESTION["query"], "assistant": "remote-lora"})
        assert asked.status_code == 200, asked.text
        out = asked.json()
        assert (out["engine"], out["adapter"], out["assistant"]) == (
            "openai",
            ADAPTER_NAME,
            "remote-lora",
        )
        assert out["usage"]["completion_tokens"] == 8
        # The same assistant as a model name of the Ollama-compatible API.
        chat = {"model": "assistant/remote-lora", "messages": HELLO, "stream": False}
        r = app.post("/api/chat", json=chat)
        assert r.status_code == 200, r.text
        assert r.json()["message"]["content"] and r.json()["eval_count"] == 8
    finally:
        app.delete("/api/assistants/remote-lora")


def _env(srv: Server) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LORAFLOW", "API_"))}
    env.update(
        {
            "LORAFLOW_DATA_DIR": str(srv.data_dir),
            "HF_HUB_OFFLINE": "1",
            "API_PORT": str(srv.port),
            "REMOTE_BACKEND": "openai",
            "COLUMNS": "250",  # one line per message: rich wraps at 80 columns without a tty
        }
    )
    return env


def test_config_check_and_status_report_the_remote_without_its_key(pair, model_cache) -> None:
    vllm, app_server = pair
    env = _env(app_server) | {
        "OPENAI_BASE_URL": f"{vllm.url}/v1",
        "OPENAI_MODEL": BASE,
        "OPENAI_API_KEY": KEY,
        "CACHE_DIR": str(model_cache),
    }
    run = {"env": env, "capture_output": True, "text": True, "timeout": 240, "check": False}
    check = subprocess.run(cli_argv("config-check"), **run)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"remote engine (openai): {vllm.url}/v1 serves {BASE}" in check.stdout
    assert "OPENAI_API_KEY" in check.stdout and KEY not in check.stdout + check.stderr

    status = subprocess.run(cli_argv("status"), **run)
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"remote   openai {BASE} at {vllm.url}/v1: {vllm.url}/v1 serves" in status.stdout
    assert KEY not in app_server.log() and KEY not in vllm.log()


def test_remote_server_gone_degrades_and_falls_back(app: httpx.Client, pair) -> None:
    """Last: stops the "vLLM" for good."""
    vllm = pair[0]
    vllm.stop()
    gone = f"OpenAI-compatible server unreachable at {vllm.url}/v1"
    health = app.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "degraded"
    assert health.json()["components"]["ollama_service"] is False
    assert health.json()["details"]["ollama_service"] == gone
    # USE_LORA_DEFAULT=true: the local model answers and the reply says why.
    r = app.post("/ask", json={**QUESTION, "use_lora": False})
    assert r.status_code == 200, r.text
    assert r.json()["engine"] == "local" and r.json()["fallback"].startswith(gone)
    # A remote model asked for by name is not swapped for another: a clear 503.
    body = {"model": f"remote/{BASE}", "messages": HELLO, "max_tokens": 8}
    r = app.post("/v1/chat/completions", json=body)
    assert r.status_code == 503 and r.json()["error"]["message"].startswith(gone)
    r = app.post("/v1/chat/completions", json={**body, "stream": True})
    assert r.status_code == 503 and gone in r.text
    r = app.post("/api/chat", json={"model": f"remote/{BASE}", "messages": HELLO})
    assert r.status_code == 503 and r.json()["error"].startswith(gone)

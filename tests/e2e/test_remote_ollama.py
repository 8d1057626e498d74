"""REMOTE_BACKEND=ollama for real: one loraflow with an adapter stands in for Ollama (its
/api/tags, /api/chat, /api/embed), a second one without a local model answers and embeds
through it, driven by the official `ollama` and `openai` clients."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ADAPTER_NAME, make_adapter
from tests.e2e.server import Server, cli_argv, free_port

pytestmark = pytest.mark.integration

BASE = "bundled:smollm2"
EMBEDDER = "ollama:bundled:minilm"  # the stand-in's own MiniLM, through its /api/embed
HELLO = [{"role": "user", "content": "What is a LoRA adapter? Answer in one sentence."}]
GREEDY = {"temperature": 0, "max_tokens": 8, "top_k": 1}


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory,
    smollm2_dir: Path,
    model_cache: Path,
    stopped_port: int,
) -> Iterator[tuple[Server, Server]]:
    """(ollama, app): a loraflow serving SmolLM2 + an adapter, and one that only uses it."""
    ollama_dir = tmp_path_factory.mktemp("ollama-data")
    make_adapter(smollm2_dir, ollama_dir / "lora_adapters" / ADAPTER_NAME)
    common = {"CACHE_DIR": str(model_cache), "MAX_NEW_TOKENS": "24", "ENABLE_UI": "false"}
    oport, aport = free_port(), free_port()
    ollama = Server(
        ollama_dir,
        {
            **common,
            "AUTO_INGEST_SAMPLE": "false",
            "OLLAMA_BASE_URL": f"http://127.0.0.1:{stopped_port}",
        },
        cli_argv("serve", "--port", str(oport)),
        oport,
    )
    app: Server | None = None
    try:
        # The app asks the stand-in for its embedding dimension at start: it must be up first.
        ollama.wait_ready()
        app = Server(
            tmp_path_factory.mktemp("app-data"),
            {
                **common,
                "REMOTE_BACKEND": "ollama",
                "OLLAMA_BASE_URL": ollama.url,
                "OLLAMA_MODEL": BASE,
                "OLLAMA_TIMEOUT": "300",
                "EMBEDDING_MODEL": EMBEDDER,
                "LOAD_LOCAL_MODEL": "false",
                "USE_LORA_DEFAULT": "false",
            },
            cli_argv("serve", "--port", str(aport)),
            aport,
        )
        app.wait_ready()
        yield ollama, app
    finally:
        if app is not None:
            app.stop()
        ollama.stop()


@pytest.fixture(scope="module")
def app(pair: tuple[Server, Server]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=pair[1].url, timeout=600) as c:
        yield c


def test_every_ollama_model_answers_by_name_through_both_clients(pair) -> None:
    import ollama
    import openai

    stand_in, app = pair
    listed = {m.model for m in ollama.Client(host=app.url).list().models}
    assert {f"remote/{BASE}", f"remote/{ADAPTER_NAME}"} <= listed
    oai = openai.OpenAI(base_url=f"{app.url}/v1", api_key="none")
    assert f"remote/{ADAPTER_NAME}" in {m.id for m in oai.models.list()}

    # Through the app, remote/<name> is exactly what the Ollama server answers for <name>.
    direct = ollama.Client(host=stand_in.url).chat(
        model=ADAPTER_NAME, messages=HELLO, options={"temperature": 0, "num_predict": 8}
    )
    via_openai = oai.chat.completions.create(
        model=f"remote/{ADAPTER_NAME}", messages=HELLO, max_tokens=8, temperature=0
    )
    via_ollama = ollama.Client(host=app.url).chat(
        model=f"remote/{ADAPTER_NAME}",
        messages=HELLO,
        options={"temperature": 0, "num_predict": 8},
    )
    assert direct.message.content
    assert via_openai.choices[0].message.content == direct.message.content
    assert via_ollama.message.content == direct.message.content
    base = oai.chat.completions.create(
        model=f"remote/{BASE}", messages=HELLO, max_tokens=8, temperature=0
    )
    assert base.choices[0].message.content != direct.message.content  # the adapter changes it

    with pytest.raises(openai.NotFoundError, match="no model 'ghost'"):
        oai.chat.completions.create(model="remote/ghost", messages=HELLO, max_tokens=4)


def test_switch_model_and_an_assistant_bind_an_ollama_model(app: httpx.Client) -> None:
    try:
        r = app.post("/switch_model", json={"engine": "ollama", "adapter": ADAPTER_NAME})
        assert r.status_code == 200, r.text
        assert (r.json()["engine"], r.json()["adapter"]) == ("ollama", ADAPTER_NAME)
        answer = app.post("/ask", json={"query": "What is loraflow?", "max_new_tokens": 8})
        assert answer.status_code == 200, answer.text
        assert answer.json()["adapter"] == ADAPTER_NAME and answer.json()["answer"]

        r = app.post("/switch_model", json={"engine": "remote", "adapter": "ghost"})
        assert r.status_code == 404 and ADAPTER_NAME in r.json()["detail"]
    finally:
        app.post("/switch_model", json={"engine": "ollama"})

    spec = {"name": "ollama-bot", "engine": "ollama", "adapter": ADAPTER_NAME}
    r = app.post("/api/assistants", json=spec)
    assert r.status_code == 201, r.text
    body = {"model": "assistant/ollama-bot", "messages": HELLO, **GREEDY}
    r = app.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"]


def test_knowledge_is_embedded_by_the_ollama_server(app: httpx.Client, tmp_path: Path) -> None:
    info = app.get("/model_info").json()
    assert info["embedding_model"] == EMBEDDER
    # The sample documents were ingested at start-up with the remote embedder.
    hits = app.post("/api/collections/default/search", json={"query": "config-check", "k": 2})
    assert hits.status_code == 200, hits.text
    assert "config-check" in str(hits.json())

    r = app.post("/api/collections", json={"name": "remote-kb", "embedding_model": EMBEDDER})
    assert r.status_code == 201, r.text
    doc = tmp_path / "rocket.md"
    doc.write_text("A rocket engine pushes hot gas out of a nozzle to make thrust.\n")
    with doc.open("rb") as f:
        up = app.post("/api/collections/remote-kb/documents", files={"files": f})
    assert up.status_code in (200, 201), up.text
    found = app.post(
        "/api/collections/remote-kb/search", json={"query": "how is thrust made?", "mode": "vector"}
    )
    assert found.status_code == 200, found.text
    assert "nozzle" in str(found.json())
    assert app.get("/api/collections/remote-kb").json()["embedding_model"] == EMBEDDER

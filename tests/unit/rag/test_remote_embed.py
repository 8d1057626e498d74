"""Remote embedders (ollama:<name>, openai:<name>) against a server that embeds with MiniLM.

The server speaks Ollama's /api/embed and OpenAI's /v1/embeddings; the official `ollama` and
`openai` clients call it too, so the requests loraflow sends are checked against theirs.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from loraflow.config import Settings
from loraflow.errors import ModelLoadError
from loraflow.rag.embed import Embedder, load_embedder
from tests.e2e.server import free_port

TEXTS = ["The rocket burns fuel.", "Tomatoes need sun.", "火箭燃烧燃料。"]


class EmbedServer(BaseHTTPRequestHandler):
    """Ollama's /api/embed and OpenAI's /v1/embeddings for one model, `minilm`."""

    embedder: Embedder
    requests: list[tuple[str, dict, dict]] = []

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: object) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append((self.path, body, dict(self.headers)))
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        if body["model"] != "minilm":
            return self._send(404, {"error": f"model {body['model']!r} not found"})
        vectors = self.embedder.embed_documents(texts).tolist()
        if self.path == "/api/embed":
            return self._send(200, {"model": "minilm", "embeddings": vectors})
        if self.path == "/v1/embeddings":
            # Out of order on purpose: clients sort by `index`.
            data = [
                {"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)
            ]
            return self._send(200, {"object": "list", "data": data[::-1], "model": "minilm"})
        self._send(404, {"error": "no such route"})


@pytest.fixture(scope="module")
def url(minilm: Embedder) -> Iterator[str]:
    EmbedServer.embedder = minilm
    server = ThreadingHTTPServer(("127.0.0.1", 0), EmbedServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _last(path: str) -> tuple[dict, dict]:
    found = [(b, h) for p, b, h in EmbedServer.requests if p == path]
    return found[-1]


def test_ollama_model_embeds_like_the_served_model_and_as_the_ollama_client_asks(
    url: str, minilm: Embedder
) -> None:
    import ollama

    remote = load_embedder("ollama:minilm", settings=Settings(OLLAMA_BASE_URL=url))
    assert (remote.name, remote.dim) == ("ollama:minilm", 384)
    np.testing.assert_allclose(
        remote.embed_documents(TEXTS), minilm.embed_documents(TEXTS), atol=1e-5
    )
    ours, _ = _last("/api/embed")
    np.testing.assert_allclose(
        remote.embed_query(TEXTS[0]), minilm.embed_query(TEXTS[0]), atol=1e-5
    )
    ollama.Client(host=url).embed(model="minilm", input=TEXTS)
    theirs, _ = _last("/api/embed")
    assert set(ours) <= set(theirs) and ours["input"] == theirs["input"] == TEXTS


def test_openai_model_embeds_with_the_key_and_as_the_openai_client_asks(
    url: str, minilm: Embedder
) -> None:
    import openai

    settings = Settings(OPENAI_BASE_URL=f"{url}/v1", OPENAI_API_KEY="sk-emb-1")
    remote = load_embedder("openai:minilm", settings=settings)
    assert (remote.name, remote.dim) == ("openai:minilm", 384)
    np.testing.assert_allclose(
        remote.embed_documents(TEXTS), minilm.embed_documents(TEXTS), atol=1e-5
    )
    ours, headers = _last("/v1/embeddings")
    assert headers["Authorization"] == "Bearer sk-emb-1"
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-emb-1")
    client.embeddings.create(model="minilm", input=TEXTS, encoding_format="float")
    theirs, _ = _last("/v1/embeddings")
    assert set(ours) <= set(theirs) and ours["input"] == theirs["input"]


def test_embedding_base_url_overrides_the_backend_url(url: str) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    s = Settings(OLLAMA_BASE_URL=down, EMBEDDING_BASE_URL=url)
    assert load_embedder("ollama:minilm", settings=s).dim == 384


def test_a_remote_model_that_cannot_answer_is_a_load_error_naming_the_fix(url: str) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ModelLoadError, match=f"'ollama:minilm'.*unreachable at {down}"):
        load_embedder("ollama:minilm", settings=Settings(OLLAMA_BASE_URL=down, OLLAMA_TIMEOUT=3))
    with pytest.raises(ModelLoadError) as err:
        load_embedder("ollama:bge-m3", settings=Settings(OLLAMA_BASE_URL=url))
    assert "HTTP 404" in err.value.message and "ollama pull bge-m3" in (err.value.hint or "")
    with pytest.raises(ModelLoadError, match="names no model"):
        load_embedder("openai:", settings=Settings())

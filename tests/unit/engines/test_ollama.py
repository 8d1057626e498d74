"""The Ollama engine against nothing at all, and against a small real Ollama-speaking server."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from loraflow.engines.base import Engine, GenerationParams
from loraflow.engines.ollama import OllamaEngine
from loraflow.errors import EngineUnavailable, InvalidInput, NotFound

MESSAGES = [{"role": "user", "content": "Hi"}]
PIECES = ["Hel", "lo", " there"]


class FakeOllama(BaseHTTPRequestHandler):
    """Speaks the parts of Ollama's API the engine uses; records request bodies."""

    requests: list[dict] = []

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass

    def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/api/tags":
            models = [{"name": "tiny:latest"}, {"name": "other:7b"}]
            self._send(200, json.dumps({"models": models}).encode())
        else:
            self._send(404, b"404 page not found", "text/plain")

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append(body)
        if body["model"] == "missing":
            error = {"error": f"model '{body['model']}' not found, try pulling it first"}
            return self._send(404, json.dumps(error).encode())
        if body["model"] == "broken":
            return self._send(500, b'{"error":"llama runner process has terminated"}')
        done = {"done": True, "done_reason": "stop", "prompt_eval_count": 26, "eval_count": 3}
        if not body["stream"]:
            reply = {"message": {"role": "assistant", "content": "".join(PIECES)}, **done}
            return self._send(200, json.dumps(reply).encode())
        lines = [{"message": {"role": "assistant", "content": p}, "done": False} for p in PIECES]
        lines.append({"message": {"role": "assistant", "content": ""}, **done})
        self._send(
            200, b"".join(json.dumps(x).encode() + b"\n" for x in lines), "application/x-ndjson"
        )


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOllama)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_names_the_url() -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    with OllamaEngine(url, "tiny", timeout=5) as engine:
        with pytest.raises(EngineUnavailable) as info:
            engine.generate(MESSAGES, GenerationParams())
        assert url in str(info.value)
        assert "ollama serve" in str(info.value)
        with pytest.raises(EngineUnavailable, match=url):
            list(engine.stream(MESSAGES, GenerationParams()))
        health = engine.health()
        assert not health.ok and url in health.detail


def test_generate_parses_text_and_counts(server_url: str) -> None:
    engine = OllamaEngine(server_url + "/", "tiny")
    assert isinstance(engine, Engine)
    params = GenerationParams(max_new_tokens=20, temperature=0, stop=["END"], seed=3)
    result = engine.generate(MESSAGES, params)
    assert (result.text, result.prompt_tokens, result.completion_tokens) == ("Hello there", 26, 3)
    assert result.finish_reason == "stop"
    sent = FakeOllama.requests[-1]
    assert sent["stream"] is False and sent["messages"] == MESSAGES
    assert sent["options"] == {
        "num_predict": 20,
        "temperature": 0,
        "top_p": 0.9,
        "top_k": 50,
        "repeat_penalty": 1.0,
        "stop": ["END"],
        "seed": 3,
    }


def test_stream_yields_pieces(server_url: str) -> None:
    engine = OllamaEngine(server_url, "tiny")
    assert list(engine.stream(MESSAGES, GenerationParams())) == PIECES
    assert FakeOllama.requests[-1]["stream"] is True


def test_missing_model_hints_pull(server_url: str) -> None:
    engine = OllamaEngine(server_url, "missing")
    for call in (engine.generate, lambda m, p: list(engine.stream(m, p))):
        with pytest.raises(EngineUnavailable) as info:
            call(MESSAGES, GenerationParams())
        assert "ollama pull missing" in str(info.value)


def test_other_http_error_quotes_status_and_body(server_url: str) -> None:
    with pytest.raises(EngineUnavailable, match="HTTP 500.*llama runner"):
        OllamaEngine(server_url, "broken").generate(MESSAGES, GenerationParams())


def test_health_reports_model_presence(server_url: str) -> None:
    assert OllamaEngine(server_url, "tiny").health().ok
    assert OllamaEngine(server_url, "other:7b").health().ok
    absent = OllamaEngine(server_url, "nope").health()
    assert not absent.ok and "ollama pull nope" in absent.detail


def test_bad_input(server_url: str) -> None:
    engine = OllamaEngine(server_url, "tiny")
    with pytest.raises(InvalidInput):
        engine.stream(MESSAGES, GenerationParams(stop=[""]))


def test_other_listed_models_answer_by_name(server_url: str) -> None:
    # `tiny` is the default (listed as tiny:latest); every other listed model can be picked.
    engine = OllamaEngine(server_url, "tiny")
    assert engine.models() == ["tiny:latest", "other:7b"]
    assert engine.adapters() == ["other:7b"]
    assert engine.generate(MESSAGES, GenerationParams(), adapter="other:7b").text == "Hello there"
    assert FakeOllama.requests[-1]["model"] == "other:7b"
    assert list(engine.stream(MESSAGES, GenerationParams(), adapter="other:7b")) == PIECES
    assert FakeOllama.requests[-1]["model"] == "other:7b"
    # A model the server lacks is the request's miss (404), with the commands that add it.
    for call in (engine.generate, lambda m, p, adapter: list(engine.stream(m, p, adapter))):
        with pytest.raises(NotFound) as info:
            call(MESSAGES, GenerationParams(), adapter="missing")
        assert "'missing'" in str(info.value) and "ollama create missing" in info.value.hint

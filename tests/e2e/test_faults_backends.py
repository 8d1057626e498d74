"""Faults: the remote backend (Ollama, or an OpenAI-compatible server) drops or stalls.

A real TCP server on 127.0.0.1 stands in for the backend and misbehaves. With
USE_LORA_DEFAULT=true, /ask with use_lora=false is answered by the local model and says why;
with USE_LORA_DEFAULT=false it is a 503 naming the backend and the reason, and so are the
chat APIs of an assistant bound to the remote engine, streamed or not.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import start_server
from tests.e2e.server import Server
from tests.unit.engines.test_faults_backends import (
    OPENAI_PIECE,
    Misbehaving,
    close_after_request,
    half_a_response,
    never_answer,
    stream_cut_at_eof,
    stream_cut_chunked,
)

pytestmark = pytest.mark.integration

TIMEOUT = "2"  # OLLAMA_TIMEOUT / OPENAI_TIMEOUT of the servers here
QUESTION = {"query": "How do I switch to Ollama without restarting?", "use_lora": False}
FAULTS: list[tuple[Callable[[socket.socket], None], str]] = [
    (close_after_request, "dropped the connection"),
    (half_a_response, "dropped the connection"),
    (never_answer, f"no answer within {TIMEOUT}s"),
]


class Switchable:
    """One backend address whose misbehaviour each test chooses."""

    def __init__(self) -> None:
        self.handler: Callable[[socket.socket], None] = close_after_request
        self.server = Misbehaving(lambda conn: self.handler(conn))
        self.url = self.server.url


@pytest.fixture(scope="module")
def backend() -> Iterator[Switchable]:
    b = Switchable()
    yield b
    b.server.close()


@pytest.fixture(scope="module")
def lenient(
    tmp_path_factory: pytest.TempPathFactory, model_cache: Path, backend: Switchable
) -> Iterator[Server]:
    """Ollama as the second engine, the local model as the default: fallback allowed."""
    env = {
        "CACHE_DIR": str(model_cache),
        "OLLAMA_BASE_URL": backend.url,
        "OLLAMA_TIMEOUT": TIMEOUT,
        "USE_LORA_DEFAULT": "true",
        "MAX_NEW_TOKENS": "8",
        "TEMPERATURE": "0",
        "ENABLE_UI": "false",
    }
    with start_server(tmp_path_factory.mktemp("lenient"), env, ("serve",)) as srv:
        yield srv


@pytest.fixture(scope="module")
def strict(
    tmp_path_factory: pytest.TempPathFactory, model_cache: Path, backend: Switchable
) -> Iterator[Server]:
    """An OpenAI-compatible server (vLLM) as the default engine: no fallback."""
    env = {
        "CACHE_DIR": str(model_cache),
        "REMOTE_BACKEND": "openai",
        "OPENAI_BASE_URL": f"{backend.url}/v1",
        "OPENAI_MODEL": "tiny",
        "OPENAI_TIMEOUT": TIMEOUT,
        "USE_LORA_DEFAULT": "false",
        "LOAD_LOCAL_MODEL": "false",
        "ENABLE_UI": "false",
    }
    with start_server(tmp_path_factory.mktemp("strict"), env, ("serve",)) as srv:
        yield srv


@pytest.fixture(params=FAULTS, ids=lambda p: f"{p[0].__name__}-{p[1]}")
def reason(request: pytest.FixtureRequest, backend: Switchable) -> str:
    """Sets the backend to one of FAULTS; returns the reason an answer must then name."""
    backend.handler, text = request.param
    return text


def test_the_local_model_answers_when_ollama_fails_and_says_why(
    lenient: Server, reason: str
) -> None:
    with httpx.Client(base_url=lenient.url, timeout=120) as client:
        r = client.post("/ask", json=QUESTION)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["engine"] == "local" and body["model_used"] in ("base", "lora")
    assert reason in body["fallback"] and "answered by the local model" in body["fallback"]
    assert body["answer"] and body["source_documents"]


def test_without_fallback_ask_and_chat_get_a_clear_503(
    strict: Server, backend: Switchable, reason: str
) -> None:
    with httpx.Client(base_url=strict.url, timeout=120) as client:
        r = client.post("/ask", json=QUESTION)
        assert r.status_code == 503, r.text
        assert reason in r.text and backend.url in r.json()["detail"]
        assert "Traceback" not in r.text

        name = f"remote-{backend.handler.__name__}".replace("_", "-")
        made = client.post("/api/assistants", json={"name": name, "engine": "remote"})
        assert made.status_code in (200, 201), made.text
        for model in ("remote/tiny", f"assistant/{name}"):
            chat = {"model": model, "messages": [{"role": "user", "content": "Hi"}]}
            r = client.post("/v1/chat/completions", json=chat)
            assert r.status_code == 503, r.text
            assert reason in r.text and "Traceback" not in r.text
            # Streamed: refused before the first event, or ended by an error event.
            body = {**chat, "stream": True}
            with client.stream("POST", "/v1/chat/completions", json=body) as s:
                text = s.read().decode()
            if s.status_code == 200:
                assert '"error"' in text and reason in text, text
            else:
                assert s.status_code == 503 and reason in text, text


@pytest.mark.parametrize("cut", [stream_cut_at_eof, stream_cut_chunked])
def test_a_stream_cut_midway_ends_the_clients_stream_with_an_error_event(
    strict: Server, backend: Switchable, cut: Callable
) -> None:
    backend.handler = cut(OPENAI_PIECE)
    chat = {"model": "remote/tiny", "messages": [{"role": "user", "content": "Hi"}]}
    with (
        httpx.Client(base_url=strict.url, timeout=120) as client,
        client.stream("POST", "/v1/chat/completions", json={**chat, "stream": True}) as s,
    ):
        assert s.status_code == 200
        events = [line[5:].strip() for line in s.iter_lines() if line.startswith("data:")]
    # The piece that arrived was passed on, then an error event ends the answer.
    assert any('"Hel"' in e for e in events), events
    answer = [e for e in events if e != "[DONE]"]
    assert '"error"' in answer[-1] and "mid-answer" in answer[-1], events

"""The remote engine chosen by REMOTE_BACKEND: construction, names, and a server that is down."""

from __future__ import annotations

import re
import threading
from dataclasses import replace
from http.server import ThreadingHTTPServer

import pytest

from loraflow import db
from loraflow.config import Settings
from loraflow.engines.fleet import OpenAIFleet
from loraflow.engines.ollama import OllamaEngine
from loraflow.engines.remote import make_remote_engine
from loraflow.errors import EngineUnavailable, NotFound
from loraflow.services.catalog.assistants import create_assistant, delete_assistant
from loraflow.services.catalog.names import list_models, switch_model
from loraflow.services.catalog.names import resolve as resolve_model
from loraflow.services.catalog.selection import SELECTION_KEY
from loraflow.services.know.ask import AskRequest, ask
from loraflow.services.ops.checks import run_checks, settings_rows
from loraflow.services.ops.health import health
from loraflow.services.runtime import Runtime
from loraflow.services.serve.chat import ChatRequest, chat
from tests.e2e.server import free_port
from tests.unit.engines.test_ollama import FakeOllama


def _with(rt: Runtime, **changes: object) -> Runtime:
    """The shared runtime with other remote settings (same database and store)."""
    settings = rt.settings.model_copy(update=changes)
    return replace(rt, settings=settings, remote=make_remote_engine(settings))


def test_remote_backend_picks_the_engine_and_hides_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REMOTE_BACKEND", "openai")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://vllm:8000/v1/")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-hidden-123")
    s = Settings()
    with make_remote_engine(s) as engine:
        assert isinstance(engine, OpenAIFleet)
        assert (engine.base_url, engine.model) == ("http://vllm:8000/v1", s.openai_model)
        assert [r.url for r in engine.replicas] == ["http://vllm:8000/v1"]
    # Several replicas of one model: one engine over all of them.
    monkeypatch.setenv("OPENAI_BASE_URLS", "http://vllm-a:8000/v1/, http://vllm-b:8000/v1")
    with make_remote_engine(Settings()) as engine:
        assert isinstance(engine, OpenAIFleet)
        assert [r.url for r in engine.replicas] == [
            "http://vllm-a:8000/v1",
            "http://vllm-b:8000/v1",
        ]
    printed = dict(settings_rows(s))
    assert printed["OPENAI_API_KEY"] == "**********" and "sk-hidden-123" not in str(printed)
    with make_remote_engine(Settings(REMOTE_BACKEND="ollama")) as engine:
        assert isinstance(engine, OllamaEngine)
    with pytest.raises(ValueError, match="remote_backend|REMOTE_BACKEND"):
        Settings(REMOTE_BACKEND="vllm")


def test_ollama_backend_serves_every_listed_model_by_name(base_rt: Runtime) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOllama)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    rt = _with(base_rt, remote_backend="ollama", ollama_base_url=url, ollama_model="tiny")
    before = db.get_state(rt.db, SELECTION_KEY)
    try:
        # The default model by any spelling, and another model the server lists.
        assert resolve_model(rt, "remote/tiny").adapter is None
        assert resolve_model(rt, "remote/tiny:latest").adapter is None
        assert resolve_model(rt, "remote/other:7b").adapter == "other:7b"
        assert [m["id"] for m in list_models(rt) if m["kind"] == "remote"] == [
            "remote/tiny",
            "remote/other:7b",
        ]
        answer = chat(
            rt, ChatRequest("remote/other:7b", messages=[{"role": "user", "content": "Hi"}])
        )
        assert answer.choices[0].text == "Hello there"
        assert FakeOllama.requests[-1]["model"] == "other:7b"

        sel = switch_model(rt, engine="ollama", adapter="other:7b")
        assert (sel.engine, sel.adapter) == ("ollama", "other:7b")
        with pytest.raises(NotFound, match="serves no model 'sql-lora'.*'other:7b'"):
            switch_model(rt, engine="remote", adapter="sql-lora")

        bound = create_assistant(
            rt, {"name": "ollama-bound", "engine": "ollama", "adapter": "other:7b"}
        )
        assert bound.adapter == "other:7b"
        delete_assistant(rt, bound.name)
    finally:
        db.set_state(rt.db, SELECTION_KEY, before)
        server.shutdown()
        server.server_close()


@pytest.mark.integration
def test_openai_backend_down_without_local_default_is_a_clear_error(base_rt: Runtime) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    rt = _with(
        base_rt,
        remote_backend="openai",
        openai_base_url=url,
        openai_model="m",
        use_lora_default=False,
        openai_timeout=5.0,
    )
    gone = re.escape(f"OpenAI-compatible server unreachable at {url}")
    # No local model and the remote server is the default: nothing to fall back to.
    with pytest.raises(EngineUnavailable, match=gone):
        ask(rt, AskRequest(query="What is loraflow?", use_lora=False))
    with pytest.raises(EngineUnavailable, match=gone):
        switch_model(rt, engine="remote", adapter="sql-lora")
    h = health(rt)
    assert h["status"] == "unhealthy" and h["components"]["ollama_service"] is False
    assert h["details"]["remote_base_url"] == url
    assert re.fullmatch(gone, h["details"]["ollama_service"])
    remote = next(c for c in run_checks(rt.settings) if c.name == "remote engine (openai)")
    assert not remote.ok and remote.required and re.match(gone, remote.detail)

"""The remote engine chosen by REMOTE_BACKEND: construction, names, and a server that is down."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from loraflow.config import Settings
from loraflow.engines.ollama import OllamaEngine
from loraflow.engines.openai_http import OpenAIHTTPEngine
from loraflow.errors import EngineUnavailable, InvalidInput
from loraflow.services.ask import AskRequest, ask
from loraflow.services.chat import resolve_model
from loraflow.services.checks import run_checks, settings_rows
from loraflow.services.models import health, switch_model
from loraflow.services.remote import make_remote_engine
from loraflow.services.runtime import Runtime
from tests.e2e.server import free_port


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
        assert isinstance(engine, OpenAIHTTPEngine)
        assert (engine.base_url, engine.model) == ("http://vllm:8000/v1", s.openai_model)
    printed = dict(settings_rows(s))
    assert printed["OPENAI_API_KEY"] == "**********" and "sk-hidden-123" not in str(printed)
    with make_remote_engine(Settings(REMOTE_BACKEND="ollama")) as engine:
        assert isinstance(engine, OllamaEngine)
    with pytest.raises(ValueError, match="remote_backend|REMOTE_BACKEND"):
        Settings(REMOTE_BACKEND="vllm")


def test_ollama_backend_refuses_remote_adapters_by_name(base_rt: Runtime) -> None:
    model = base_rt.settings.ollama_model
    assert resolve_model(base_rt, f"remote/{model}").adapter is None
    for call in (
        lambda: resolve_model(base_rt, "remote/sql-lora"),
        lambda: switch_model(base_rt, engine="remote", adapter="sql-lora"),
    ):
        with pytest.raises(InvalidInput, match="'sql-lora' cannot be served by the Ollama backend"):
            call()


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

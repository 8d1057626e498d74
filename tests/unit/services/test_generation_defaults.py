"""REPETITION_PENALTY and ASK_MAX_NEW_TOKENS reach /ask and the studio, not the OpenAI APIs."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from loraflow.config import Settings
from loraflow.services.know import ask
from loraflow.services.serve import chat
from loraflow.services.write import writing


def _rt(tmp_path: Any, **env: Any) -> Any:
    return SimpleNamespace(settings=Settings(data_dir=tmp_path, **env))


def test_ask_and_writing_take_the_instance_defaults(tmp_path: Any) -> None:
    rt = _rt(tmp_path, repetition_penalty=1.2, ask_max_new_tokens=200, max_new_tokens=512)
    p = ask._params(rt, ask.AskRequest(query="q"))
    assert (p.repetition_penalty, p.max_new_tokens) == (1.2, 200)
    w = writing._params(rt, writing.WriteRequest(prompt="Once"))
    assert (w.repetition_penalty, w.max_new_tokens) == (1.2, 512)


def test_max_new_tokens_caps_the_ask_default(tmp_path: Any) -> None:
    rt = _rt(tmp_path, ask_max_new_tokens=256, max_new_tokens=24)
    assert ask._params(rt, ask.AskRequest(query="q")).max_new_tokens == 24
    # A request that names its length still gets it.
    long = ask._params(rt, ask.AskRequest(query="q", max_new_tokens=100))
    assert long.max_new_tokens == 100


def test_a_request_overrides_them(tmp_path: Any) -> None:
    rt = _rt(tmp_path, repetition_penalty=1.2, ask_max_new_tokens=200)
    p = ask._params(rt, ask.AskRequest(query="q", repetition_penalty=1.0, max_new_tokens=64))
    assert (p.repetition_penalty, p.max_new_tokens) == (1.0, 64)


def test_the_openai_and_ollama_apis_keep_their_own_default(tmp_path: Any) -> None:
    rt = _rt(tmp_path, repetition_penalty=1.3)
    p = chat.params_of(rt, chat.ChatRequest(model="base"))
    assert p.repetition_penalty == 1.0 and p.max_new_tokens == rt.settings.max_new_tokens


def test_a_chat_request_may_set_its_own_penalty(tmp_path: Any) -> None:
    rt = _rt(tmp_path, repetition_penalty=1.3)
    p = chat.params_of(rt, chat.ChatRequest(model="base", repetition_penalty=1.15))
    assert p.repetition_penalty == 1.15

"""Ollama-compatible API (/api/chat, /api/generate, /api/tags, /api/show, /api/embed, ...).

Streams are NDJSON, on by default, as in Ollama. `model` picks the base model or an adapter;
a top-level `rag: true` answers over the knowledge base and adds `sources` to the last line.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from loraflow import __version__
from loraflow.api.compat import ollama_error, route_class
from loraflow.api.deps import RuntimeDep
from loraflow.api.schemas import ollama as S
from loraflow.api.streaming import stream_response
from loraflow.errors import InvalidInput, LoraflowError
from loraflow.services.catalog import names as catalog
from loraflow.services.serve import chat as chat_service
from loraflow.services.serve.chat import ChatRequest
from loraflow.services.serve.embeddings import embed

router = APIRouter(prefix="/api", tags=["ollama"], route_class=route_class(ollama_error))
# /api/chat and /api/generate: one JSON object with stream: false, else NDJSON lines.
STREAMED: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"application/x-ndjson": {}},
        "description": "With stream (the default), NDJSON lines of this shape; the last has "
        "done: true.",
    }
}


class _Open(BaseModel):
    # keep_alive, format, think, images... are accepted and ignored.
    model_config = ConfigDict(extra="allow")


class Options(_Open):
    num_predict: int | None = None
    temperature: float | None = Field(None, ge=0.0, le=5.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    stop: list[str] | None = None
    seed: int | None = None
    repeat_penalty: float | None = Field(None, gt=0.0, le=2.0, description="Default 1.0 (off).")


class _Generation(_Open):
    model: str
    stream: bool = True
    options: Options = Field(default_factory=Options)
    rag: bool = False

    def request(self, **kw: Any) -> ChatRequest:
        o = self.options
        # Ollama's num_predict: -1 means "no limit", here the configured MAX_NEW_TOKENS.
        limit = o.num_predict if o.num_predict and o.num_predict > 0 else None
        return ChatRequest(
            model=self.model,
            max_tokens=limit,
            temperature=o.temperature,
            top_p=o.top_p,
            top_k=o.top_k,
            stop=list(o.stop or []),
            seed=o.seed,
            repetition_penalty=o.repeat_penalty,
            rag=self.rag,
            **kw,
        )


class OllamaMessage(_Open):
    role: str
    content: str = ""


class ChatBody(_Generation):
    messages: list[OllamaMessage] = Field(..., min_length=1)


class GenerateBody(_Generation):
    prompt: str = ""
    system: str | None = None
    raw: bool = False


class EmbedBody(_Open):
    model: str
    input: str | list[str]


class LegacyEmbedBody(_Open):
    model: str
    prompt: str


class ShowBody(_Open):
    model: str | None = None
    name: str | None = None


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _stats(started: float, prompt: int, completion: int) -> dict[str, Any]:
    total = int((time.perf_counter() - started) * 1e9)
    return {
        "total_duration": total,
        "load_duration": 0,
        "prompt_eval_count": prompt,
        "prompt_eval_duration": 0,
        "eval_count": completion,
        "eval_duration": total,
    }


def _answer(rt: Any, req: ChatRequest, stream: bool, chat: bool) -> Any:
    """One Ollama answer: a JSON object, or NDJSON lines ending with the `done` line."""
    started = time.perf_counter()

    def shape(text: str) -> dict[str, Any]:
        if chat:
            return {"message": {"role": "assistant", "content": text}}
        return {"response": text}

    if not stream:
        result = chat_service.chat(rt, req)
        choice = result.choices[0]
        out = {"model": result.model, "created_at": _now(), **shape(choice.text), "done": True}
        out.update(done_reason=choice.finish_reason)
        out.update(_stats(started, result.prompt_tokens, result.completion_tokens))
        if result.sources is not None:
            out["sources"] = result.sources
        return out
    opened = chat_service.chat_stream(rt, req)

    def lines() -> Iterator[str]:
        finish = "stop"
        try:
            for e in opened.events:
                if e.text is None:
                    finish = e.finish_reason or "stop"
                    continue
                line = {"model": opened.model, "created_at": _now(), **shape(e.text)}
                yield json.dumps({**line, "done": False}) + "\n"
        except LoraflowError as exc:  # headers are sent: the error travels as a line
            yield json.dumps({"error": exc.message}) + "\n"
            return
        last = {"model": opened.model, "created_at": _now(), **shape(""), "done": True}
        last["done_reason"] = finish
        u = opened.usage
        last.update(_stats(started, u.get("prompt_tokens", 0), u.get("completion_tokens", 0)))
        if opened.sources is not None:
            last["sources"] = opened.sources
        yield json.dumps(last) + "\n"

    return stream_response(lines(), opened.close, "application/x-ndjson")


@router.post(
    "/chat",
    response_model=S.ChatResponse,
    response_model_exclude_unset=True,
    responses=STREAMED,
    summary="Chat (NDJSON stream by default)",
)
def chat(body: ChatBody, rt: RuntimeDep) -> Any:
    for i, m in enumerate(body.messages):
        if m.role not in ("system", "user", "assistant"):
            raise InvalidInput(f"messages[{i}].role={m.role!r} is not system, user or assistant")
    messages = [{"role": m.role, "content": m.content} for m in body.messages]
    return _answer(rt, body.request(messages=messages), body.stream, chat=True)


@router.post(
    "/generate",
    response_model=S.GenerateResponse,
    response_model_exclude_unset=True,
    responses=STREAMED,
    summary="Complete a prompt (NDJSON stream by default)",
)
def generate(body: GenerateBody, rt: RuntimeDep) -> Any:
    target = catalog.resolve(rt, body.model)
    if not body.prompt:
        # Ollama answers an empty prompt by loading the model; it is always loaded here.
        return {"model": target.name, "created_at": _now(), "response": "", "done": True,
                "done_reason": "load"}  # fmt: skip
    if body.raw:
        return _answer(rt, body.request(prompt=body.prompt), body.stream, chat=False)
    messages = [{"role": "system", "content": body.system}] if body.system else []
    messages.append({"role": "user", "content": body.prompt})
    return _answer(rt, body.request(messages=messages), body.stream, chat=False)


def _details(parent: str | None) -> dict[str, Any]:
    return {
        "parent_model": parent or "",
        "format": "safetensors",
        "family": "",
        "families": [],
        "parameter_size": "",
        "quantization_level": "",
    }


@router.get("/tags", response_model=S.TagList, summary="The models this server answers with")
def tags(rt: RuntimeDep) -> dict[str, Any]:
    modified = datetime.fromtimestamp(rt.started_at, UTC).isoformat().replace("+00:00", "Z")
    return {
        "models": [
            {
                "name": m["id"],
                "model": m["id"],
                "modified_at": modified,
                "size": 0,
                "digest": hashlib.sha256(f"{m['id']}|{m['path']}".encode()).hexdigest(),
                "details": _details(m["parent"]),
            }
            for m in catalog.list_models(rt)
        ]
    }


@router.post("/show", response_model=S.ShowResponse, summary="Details of one model")
def show(body: ShowBody, rt: RuntimeDep) -> dict[str, Any]:
    target = catalog.resolve(rt, body.model or body.name)
    rows = {m["id"]: m for m in catalog.list_models(rt)}
    row = rows.get(target.adapter or catalog.base_model_id(rt), {})
    base = catalog.base_model_id(rt)
    if target.kind == "remote":
        # Served by the remote engine's server: its base model, with the adapter by name.
        base = f"remote/{rt.remote.model}"
        row = {"path": target.adapter}
    modelfile = f"FROM {base}\n" + (f"ADAPTER {row.get('path')}\n" if target.adapter else "")
    return {
        "modelfile": modelfile,
        "parameters": "",
        "template": "",
        "details": _details(base if target.adapter else None),
        "model_info": {"general.basename": base, "loraflow.adapter": target.adapter},
        "capabilities": ["completion"],
        "modified_at": _now(),
    }


@router.post("/embed", response_model=S.EmbedResponse, summary="Embed texts")
def embed_route(body: EmbedBody, rt: RuntimeDep) -> dict[str, Any]:
    started = time.perf_counter()
    result = embed(rt, body.model, body.input)
    return {
        "model": body.model,
        "embeddings": result.vectors.tolist(),
        "total_duration": int((time.perf_counter() - started) * 1e9),
        "load_duration": 0,
        "prompt_eval_count": result.tokens,
    }


@router.post(
    "/embeddings",
    response_model=S.LegacyEmbedResponse,
    summary="Embed one text (Ollama's older endpoint)",
)
def legacy_embeddings(body: LegacyEmbedBody, rt: RuntimeDep) -> dict[str, Any]:
    return {"embedding": embed(rt, body.model, body.prompt).vectors[0].tolist()}


@router.get("/version", response_model=S.Version, summary="Server version")
def version() -> dict[str, str]:
    return {"version": __version__}

"""OpenAI-compatible API (/v1/...): chat, completions, embeddings, models, vLLM adapter loading.

`model` picks the base model or any loaded adapter per request. Extra body fields (the OpenAI
clients' `extra_body`): `rag: true` answers over the knowledge base and adds `sources`;
`rag_top_k` and `collection` tune the retrieval.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from loraflow.api.compat import openai_error, route_class
from loraflow.api.deps import RuntimeDep
from loraflow.api.schemas import openai as S
from loraflow.api.streaming import stream_response
from loraflow.errors import InvalidInput, LoraflowError
from loraflow.services.catalog import names as catalog
from loraflow.services.serve import chat as chat_service
from loraflow.services.serve.chat import ChatRequest, ChatResult, ChatStream
from loraflow.services.serve.embeddings import embed
from loraflow.services.serve.lora_serving import load_lora, unload_lora

router = APIRouter(prefix="/v1", tags=["openai"], route_class=route_class(openai_error))


def _streamed(chunk: str) -> dict[int | str, dict[str, Any]]:
    """Docs of a route that answers JSON, or with stream: true server-sent events."""
    what = f"With stream: true, {chunk} chunks as server-sent events, then data: [DONE]."
    return {200: {"content": {"text/event-stream": {}}, "description": what}}


class _Open(BaseModel):
    # Fields other clients send (presence_penalty, user, logprobs...) are accepted and ignored.
    model_config = ConfigDict(extra="allow")


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = ""


class Sampling(_Open):
    model: str
    max_tokens: int | None = Field(None, ge=1, le=32768)
    max_completion_tokens: int | None = Field(None, ge=1, le=32768)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    n: int = Field(1, ge=1, le=8)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    ignore_eos: bool = Field(False, description="Generate max_tokens even past the end (vLLM).")
    repetition_penalty: float | None = Field(
        None, gt=0.0, le=2.0, description="Penalty on tokens already generated (vLLM); 1.0 = off."
    )
    rag: bool = Field(False, description="Answer over the knowledge base; adds `sources`.")
    rag_top_k: int | None = Field(None, ge=1, le=50)
    collection: str | None = Field(None, description="Knowledge base for rag (default one).")

    def request(self, **kw: Any) -> ChatRequest:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return ChatRequest(
            model=self.model,
            max_tokens=self.max_completion_tokens or self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            stop=stop,
            seed=self.seed,
            ignore_eos=self.ignore_eos,
            repetition_penalty=self.repetition_penalty,
            n=self.n,
            rag=self.rag,
            rag_top_k=self.rag_top_k,
            collection=self.collection,
            **kw,
        )


class ChatCompletionBody(Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1)


class CompletionBody(Sampling):
    prompt: str | list[str]
    echo: bool = False


class EmbeddingBody(_Open):
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"


class LoadLoraBody(BaseModel):
    lora_name: str
    lora_path: str
    load_inplace: bool = Field(False, description="Replace a loaded adapter of this name.")


class UnloadLoraBody(BaseModel):
    lora_name: str
    lora_int_id: int | None = None


def _text(content: str | list[dict[str, Any]] | None) -> str:
    if isinstance(content, list):
        # Content parts: only text parts carry anything a text model can read.
        return "".join(str(p.get("text", "")) for p in content if p.get("type") == "text")
    return content or ""


def _messages(body: ChatCompletionBody) -> list[dict[str, str]]:
    role = {"developer": "system"}
    return [{"role": role.get(m.role, m.role), "content": _text(m.content)} for m in body.messages]


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _envelope(kind: str, prefix: str, model: str) -> dict[str, Any]:
    return {
        "id": f"{prefix}-{uuid.uuid4().hex}",
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
    }


@router.get(
    "/models",
    response_model=S.ModelList,
    response_model_exclude_unset=True,
    summary="The base model, every loaded adapter, the embedding model",
)
def list_models(rt: RuntimeDep) -> dict[str, Any]:
    created = int(rt.started_at)
    data = [
        {
            "id": m["id"],
            "object": "model",
            "created": created,
            "owned_by": "loraflow",
            "root": m["id"] if m["kind"] == "base" else m["path"],
            "parent": m["parent"],
            "kind": m["kind"],
            **({"attached": m["attached"]} if m["kind"] == "adapter" else {}),
        }
        for m in catalog.list_models(rt)
    ]
    data.append(
        {
            "id": rt.embedder.name,
            "object": "model",
            "created": created,
            "owned_by": "loraflow",
            "root": rt.embedder.name,
            "parent": None,
            "kind": "embedding",
        }
    )
    return {"object": "list", "data": data}


@router.get(
    "/models/{model:path}",
    response_model=S.Model,
    response_model_exclude_unset=True,
    summary="One model by name",
)
def get_model(model: str, rt: RuntimeDep) -> dict[str, Any]:
    for m in list_models(rt)["data"]:
        if m["id"] == model:
            return m
    catalog.resolve(rt, model)  # raises NotFound naming the known models
    return {"id": model, "object": "model", "created": int(rt.started_at), "owned_by": "loraflow"}


@router.post(
    "/chat/completions",
    response_model=S.ChatCompletion,
    response_model_exclude_unset=True,
    responses=_streamed("chat.completion.chunk"),
    summary="Chat with the base model or an adapter",
)
def chat_completions(body: ChatCompletionBody, rt: RuntimeDep) -> Any:
    req = body.request(messages=_messages(body))
    if body.stream:
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        return _sse(chat_service.chat_stream(rt, req), "chat.completion.chunk", include_usage)
    result = chat_service.chat(rt, req)
    out = _envelope("chat.completion", "chatcmpl", result.model)
    out["choices"] = [
        {
            "index": c.index,
            "message": {"role": "assistant", "content": c.text},
            "finish_reason": c.finish_reason,
            "logprobs": None,
        }
        for c in result.choices
    ]
    return _finish(out, result)


@router.post(
    "/completions",
    response_model=S.Completion,
    response_model_exclude_unset=True,
    responses=_streamed("text_completion"),
    summary="Continue a raw prompt (no chat template)",
)
def completions(body: CompletionBody, rt: RuntimeDep) -> Any:
    prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
    if not prompts:
        raise InvalidInput("prompt must be a string or a non-empty list of strings")
    if body.stream:
        if len(prompts) > 1:
            raise InvalidInput("stream=true takes one prompt; send a list without streaming")
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        stream = chat_service.chat_stream(rt, body.request(prompt=prompts[0]))
        return _sse(stream, "text_completion", include_usage)
    choices: list[dict[str, Any]] = []
    prompt_tokens = completion_tokens = 0
    model = body.model
    for prompt in prompts:
        result = chat_service.chat(rt, body.request(prompt=prompt))
        model = result.model
        prompt_tokens += result.prompt_tokens
        completion_tokens += result.completion_tokens
        for c in result.choices:
            text = prompt + c.text if body.echo else c.text
            choices.append(
                {
                    "index": len(choices),
                    "text": text,
                    "logprobs": None,
                    "finish_reason": c.finish_reason,
                }
            )
    out = _envelope("text_completion", "cmpl", model)
    out["choices"] = choices
    out["usage"] = _usage(prompt_tokens, completion_tokens)
    return out


def _finish(out: dict[str, Any], result: ChatResult) -> dict[str, Any]:
    out["usage"] = _usage(result.prompt_tokens, result.completion_tokens)
    if result.sources is not None:
        out["sources"] = result.sources
    return out


def _sse(stream: ChatStream, kind: str, include_usage: bool) -> Response:
    """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`."""
    head = _envelope(kind, "chatcmpl" if kind.startswith("chat") else "cmpl", stream.model)
    chat = kind.startswith("chat")

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        return f"data: {json.dumps({**head, 'choices': choices, **extra})}\n\n"

    def piece(index: int, text: str | None, finish: str | None) -> dict[str, Any]:
        if chat:
            delta = {} if text is None else {"content": text}
            return {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}
        return {"index": index, "text": text or "", "finish_reason": finish, "logprobs": None}

    def lines() -> Iterator[str]:
        extra = {"sources": stream.sources} if stream.sources is not None else {}
        started: set[int] = set()
        try:
            for e in stream.events:
                if chat and e.index not in started:
                    started.add(e.index)
                    role = {"index": e.index, "delta": {"role": "assistant", "content": ""}}
                    yield chunk([{**role, "finish_reason": None, "logprobs": None}], **extra)
                    extra = {}
                yield chunk([piece(e.index, e.text, e.finish_reason)], **extra)
                extra = {}
            if include_usage:
                u = stream.usage
                usage = _usage(u.get("prompt_tokens", 0), u.get("completion_tokens", 0))
                yield chunk([], usage=usage)
        except LoraflowError as exc:  # headers are sent: the error travels as an event
            error = {"message": exc.message, "type": "server_error"}
            yield f"data: {json.dumps({'error': error})}\n\n"
        yield "data: [DONE]\n\n"

    return stream_response(lines(), stream.close, "text/event-stream")


@router.post(
    "/embeddings",
    response_model=S.EmbeddingList,
    summary="Embed texts with the runtime's embedding model",
)
def embeddings(body: EmbeddingBody, rt: RuntimeDep) -> dict[str, Any]:
    result = embed(rt, body.model, body.input)
    data = []
    for i, vec in enumerate(result.vectors):
        if body.encoding_format == "base64":
            value: Any = base64.b64encode(vec.astype("<f4").tobytes()).decode()
        else:
            value = vec.tolist()
        data.append({"object": "embedding", "index": i, "embedding": value})
    usage = {"prompt_tokens": result.tokens, "total_tokens": result.tokens}
    return {"object": "list", "data": data, "model": result.model, "usage": usage}


@router.post(
    "/load_lora_adapter",
    response_class=PlainTextResponse,
    summary="Load (or with load_inplace, reload) an adapter",
)
def load_lora_adapter(body: LoadLoraBody, rt: RuntimeDep) -> PlainTextResponse:
    load_lora(rt, body.lora_name, body.lora_path, replace=body.load_inplace)
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")


@router.post("/unload_lora_adapter", response_class=PlainTextResponse, summary="Unload an adapter")
def unload_lora_adapter(body: UnloadLoraBody, rt: RuntimeDep) -> PlainTextResponse:
    unload_lora(rt, body.lora_name)
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")


@router.get(
    "/batch",
    response_model=S.BatchStats,
    summary="Requests decoding now and waiting (loraflow extension)",
)
def batch(rt: RuntimeDep) -> dict[str, Any]:
    return chat_service.batch_stats(rt)

"""Chat and text completion for the OpenAI- and Ollama-compatible APIs; model names resolve here."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from loraflow.engines.base import FinishReason, GenerationParams, GenerationResult
from loraflow.errors import InvalidInput, NotFound
from loraflow.services.catalog import assistants, remote
from loraflow.services.catalog.generation import AnswerStream, request_params
from loraflow.services.catalog.names import ModelTarget, resolve
from loraflow.services.know.ask import AskRequest, ask
from loraflow.services.manage import deployments
from loraflow.services.runtime import Runtime, local_engine

log = logging.getLogger(__name__)


def batch_stats(rt: Runtime) -> dict[str, Any]:
    """How many requests the local engine is decoding now and how many wait to join."""
    engine = rt.local
    running, waiting = engine.queue_depth() if engine is not None else (0, 0)
    return {
        "batching": bool(engine is not None and engine.batching),
        "max_batch_size": rt.settings.max_batch_size,
        "running": running,
        "waiting": waiting,
    }


@dataclass
class ChatRequest:
    """One chat or completion request in API-neutral terms."""

    model: str
    messages: list[dict[str, str]] = field(default_factory=list)
    prompt: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    n: int = 1
    ignore_eos: bool = False
    # None: the APIs' own default of 1.0 (off), whatever REPETITION_PENALTY says.
    repetition_penalty: float | None = None
    rag: bool = False
    rag_top_k: int | None = None
    collection: str | None = None


@dataclass
class Choice:
    """One answer of a request that asked for `n` of them."""

    index: int
    text: str
    finish_reason: FinishReason


@dataclass
class ChatResult:
    """Answers, token counts and (for RAG) the cited sources."""

    model: str
    choices: list[Choice]
    prompt_tokens: int
    completion_tokens: int
    sources: list[dict[str, Any]] | None = None


def params_of(rt: Runtime, req: ChatRequest) -> GenerationParams:
    """Generation settings from the request, defaults from the settings."""
    s = rt.settings
    if not 1 <= req.n <= 8:
        raise InvalidInput(f"n={req.n} must be between 1 and 8")
    return request_params(
        s,
        max_tokens=req.max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        stop=req.stop,
        seed=req.seed,
        ignore_eos=req.ignore_eos,
        # The OpenAI and Ollama APIs' own default, whatever REPETITION_PENALTY says.
        repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
    )


def _nth(params: GenerationParams, i: int) -> GenerationParams:
    # Distinct seeds so n sampled answers differ yet stay repeatable.
    return params if i == 0 or params.seed is None else replace(params, seed=params.seed + i)


def chat(rt: Runtime, req: ChatRequest) -> ChatResult:
    """Answer a chat (or continue a prompt) `n` times with the model it names."""
    target = resolve(rt, req.model)
    if target.routed is None:
        return _counted(rt, target, _chat(rt, target, req))
    # Requests to a deployment target count towards its variant's live numbers.
    started = time.perf_counter()
    try:
        try:
            result = _chat(rt, target, req)
        except NotFound:
            again = _rerouted(rt, target, req)
            if again is None:
                raise
            target, started = again, time.perf_counter()
            result = _chat(rt, target, req)
    except InvalidInput:
        raise  # the request's fault, not the adapter's
    except Exception:
        _record(rt, target, False, started)
        raise
    _record(rt, target, True, started)
    return _counted(rt, target, result)


def _record(rt: Runtime, target: ModelTarget, ok: bool, started: float) -> None:
    """Count a finished request to a deployment target towards its variant's numbers."""
    if target.routed is not None:
        deployments.record(rt, target.routed, ok, time.perf_counter() - started)


def _rerouted(rt: Runtime, target: ModelTarget, req: ChatRequest) -> ModelTarget | None:
    """The target routed afresh when the remote variant it went to was retired meanwhile.

    A request routed just before a switch can reach the replicas after the old version was
    unloaded there; its deployment has moved on, so it is answered by what the target
    serves now. None when the deployment did not change (the NotFound stands).
    """
    if target.routed is None or not target.routed.remote or req.rag:
        return None
    again = resolve(rt, req.model)
    if again.routed is None or again.routed.version == target.routed.version:
        return None
    log.info(
        "%s: %s was retired mid-request; answered by %s",
        target.name,
        target.routed.adapter,
        again.routed.adapter,
    )
    return again


def _usage_name(target: ModelTarget) -> str:
    """The model name usage is counted under: the adapter that answered, or the name asked."""
    if target.kind == "adapter" and target.adapter:
        return target.adapter
    return target.name


def _counted(rt: Runtime, target: ModelTarget, result: ChatResult) -> ChatResult:
    rt.usage.record(_usage_name(target), result.prompt_tokens, result.completion_tokens)
    return result


def _chat(rt: Runtime, target: ModelTarget, req: ChatRequest) -> ChatResult:
    req = _with_chat_defaults(rt, target.assistant, req)
    params = params_of(rt, req)
    if req.rag or target.assistant:
        return _rag_chat(rt, target, req, params)
    engine = _engine(rt, target, req)
    # The remote engines answer one request at a time; the local one may batch them.
    if target.kind == "remote" or not local_engine(rt).batching:
        results = [_generate(engine, target, req, _nth(params, i)) for i in range(req.n)]
        choices = [Choice(i, r.text, r.finish_reason) for i, r in enumerate(results)]
        completion = sum(r.completion_tokens for r in results)
        return ChatResult(target.name, choices, results[0].prompt_tokens, completion)
    # Opened together, the n answers decode side by side in the running batch.
    streams = [_open(rt, target, req, _nth(params, i)) for i in range(req.n)]
    choices, completion, prompt = [], 0, 0
    for i, stream in enumerate(streams):
        text = "".join(stream)
        choices.append(Choice(i, text, stream.finish_reason))
        completion += stream.completion_tokens
        prompt = stream.prompt_tokens
    return ChatResult(target.name, choices, prompt, completion)


def _engine(rt: Runtime, target: ModelTarget, req: ChatRequest) -> Any:
    """The remote engine for `remote/<name>` chats, else the local engine."""
    if target.kind != "remote":
        return local_engine(rt)
    if req.prompt is not None:
        raise InvalidInput(
            f"model {target.name!r} answers chat messages only; raw completions use local models"
        )
    return rt.remote


def _generate(
    engine: Any, target: ModelTarget, req: ChatRequest, params: GenerationParams
) -> GenerationResult:
    if req.prompt is not None:
        return engine.generate_text(req.prompt, params, adapter=target.adapter)
    return engine.generate(req.messages, params, adapter=target.adapter)


def _rag_chat(
    rt: Runtime, target: ModelTarget, req: ChatRequest, params: GenerationParams
) -> ChatResult:
    """The /ask pipeline (retrieve, cite, answer) for the chat's last user turn."""
    if req.prompt is not None:
        raise InvalidInput("rag works with chat messages, not with a raw prompt")
    turns = [m for m in req.messages if m.get("role") in ("user", "assistant")]
    if not turns or turns[-1].get("role") != "user":
        raise InvalidInput("with rag the chat must end with a user message")
    system = "\n".join(m["content"] for m in req.messages if m.get("role") == "system")
    choices, completion, prompt, sources = [], 0, 0, None
    engine = "remote" if target.kind == "remote" else "local"
    for i in range(req.n):
        p = _nth(params, i)
        result = ask(
            rt,
            AskRequest(
                query=turns[-1]["content"],
                adapter=None if target.assistant else target.adapter,
                engine=None if target.assistant else engine,
                assistant=target.assistant,
                top_k=req.rag_top_k,
                collection=req.collection,
                max_new_tokens=p.max_new_tokens,
                # Unset: /ask's own default (REPETITION_PENALTY), as rag answers are /ask's.
                repetition_penalty=req.repetition_penalty,
                temperature=p.temperature,
                top_p=p.top_p,
                top_k_sampling=p.top_k,
                stop=list(p.stop),
                seed=p.seed,
                system_prompt=system or None,
                history=[{"role": m["role"], "content": m["content"]} for m in turns[:-1]],
            ),
        )
        tokens = result.usage.get("completion_tokens", 0)
        finish: FinishReason = "length" if tokens >= p.max_new_tokens else "stop"
        choices.append(Choice(i, result.answer, finish))
        completion += tokens
        prompt = result.usage.get("prompt_tokens", 0)
        sources = result.source_documents
    return ChatResult(target.name, choices, prompt, completion, sources)


def _open(
    rt: Runtime, target: ModelTarget, req: ChatRequest, params: GenerationParams
) -> AnswerStream:
    engine = _engine(rt, target, req)
    if target.kind == "remote":
        counted = remote.CountedPieces(
            engine.stream(req.messages, params, adapter=target.adapter), params.max_new_tokens
        ).prime()
        return AnswerStream(counted, engine, params.max_new_tokens, 0)
    if req.prompt is not None:
        pieces = engine.stream_text(req.prompt, params, adapter=target.adapter)
        prompt_tokens = engine.count_tokens(req.prompt)
    else:
        pieces = engine.stream(req.messages, params, adapter=target.adapter)
        prompt_tokens = sum(engine.count_tokens(m["content"]) for m in req.messages)
    return AnswerStream(pieces, engine, params.max_new_tokens, prompt_tokens)


@dataclass
class StreamEvent:
    """A piece of answer `index`, or (text None) its end with the finish reason."""

    index: int
    text: str | None
    finish_reason: FinishReason | None = None


@dataclass
class ChatStream:
    """A streamed request: events, then usage; `sources` is known before the first event."""

    model: str
    events: Iterator[StreamEvent]
    sources: list[dict[str, Any]] | None = None
    usage: dict[str, int] = field(default_factory=dict)
    _open: list[AnswerStream] = field(default_factory=list)

    def close(self) -> None:
        """Stop every answer still generating."""
        for s in self._open:
            s.close()


def chat_stream(rt: Runtime, req: ChatRequest) -> ChatStream:
    """Stream `n` answers one after another; bad input raises here, before any event."""
    target = resolve(rt, req.model)
    req = _with_chat_defaults(rt, target.assistant, req)
    params = params_of(rt, req)
    if req.rag or target.assistant:
        # Retrieval and the cited answer come from /ask, which answers in one piece.
        result = _rag_chat(rt, target, req, params)
        answered = [
            e
            for c in result.choices
            for e in (StreamEvent(c.index, c.text), StreamEvent(c.index, None, c.finish_reason))
        ]
        usage = {"prompt_tokens": result.prompt_tokens}
        usage["completion_tokens"] = result.completion_tokens
        return ChatStream(target.name, iter(answered), result.sources, usage)
    started = time.perf_counter()
    try:
        try:
            first = _open(rt, target, req, params)
        except NotFound:
            again = _rerouted(rt, target, req)
            if again is None:
                raise
            target, started = again, time.perf_counter()
            first = _open(rt, target, req, params)
    except InvalidInput:
        raise
    except Exception:
        _record(rt, target, False, started)
        raise
    out = ChatStream(target.name, iter(()), None)
    out._open.append(first)

    def events() -> Iterator[StreamEvent]:
        try:
            yield from routed()
        finally:
            usage = out.usage
            rt.usage.record(
                _usage_name(target),
                usage.get("prompt_tokens", 0),
                usage.get("completion_tokens", 0),
            )

    def routed() -> Iterator[StreamEvent]:
        if target.routed is None:
            yield from answers()
            return
        ok = False
        try:
            yield from answers()
            ok = True
        except GeneratorExit:
            ok = True  # the client went away: not the adapter's failure
            raise
        finally:
            _record(rt, target, ok, started)

    def answers() -> Iterator[StreamEvent]:
        completion = 0
        for i in range(req.n):
            stream = first if i == 0 else _open(rt, target, req, _nth(params, i))
            if i:
                out._open.append(stream)
            for piece in stream:
                yield StreamEvent(i, piece)
            completion += stream.completion_tokens
            out.usage = {"prompt_tokens": first.prompt_tokens, "completion_tokens": completion}
            yield StreamEvent(i, None, stream.finish_reason)

    out.events = events()
    return out


def _with_chat_defaults(rt: Runtime, name: str | None, req: ChatRequest) -> ChatRequest:
    """A chat-API request with the assistant's generation defaults where it set none."""
    if not name:
        return req
    gen = assistants.get_assistant(rt, name).generation
    return replace(
        req,
        max_tokens=req.max_tokens or gen.get("max_new_tokens"),
        temperature=req.temperature if req.temperature is not None else gen.get("temperature"),
        top_p=req.top_p if req.top_p is not None else gen.get("top_p"),
        top_k=req.top_k if req.top_k is not None else gen.get("top_k"),
        stop=list(req.stop) or list(gen.get("stop", [])),
    )

"""RAG question answering: retrieve, assemble a cited prompt, generate with the chosen model."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from loraflow.engines.base import Engine, GenerationParams
from loraflow.engines.remote import is_remote
from loraflow.errors import EngineUnavailable, InvalidInput
from loraflow.rag.prompt import DEFAULT_SYSTEM_PROMPT, build_rag_messages
from loraflow.rag.retrieve import RetrievedChunk
from loraflow.services.catalog import assistants
from loraflow.services.catalog.generation import AnswerStream, request_params
from loraflow.services.catalog.names import choose, local_fallback
from loraflow.services.catalog.remote import CountedPieces
from loraflow.services.catalog.selection import Selection
from loraflow.services.know.knowledge import retrieve_for
from loraflow.services.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass
class AskRequest:
    """One question and the optional per-request overrides."""

    query: str
    use_lora: bool | None = None
    adapter: str | None = None
    top_k: int | None = None
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k_sampling: int | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    repetition_penalty: float | None = None
    collection: str | None = None
    assistant: str | None = None
    retrieval_mode: str | None = None
    # Filled from an assistant (or by a chat API): engine, persona, earlier turns, knowledge.
    engine: str | None = None
    system_prompt: str | None = None
    history: list[dict[str, str]] = field(default_factory=list)
    collections: list[str] = field(default_factory=list)
    use_retrieval: bool = True


@dataclass
class AskResult:
    """The seed's /ask response plus what answered and why."""

    answer: str
    source_documents: list[dict[str, Any]]
    model_used: str
    processing_time: float
    engine: str
    adapter: str | None
    fallback: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    assistant: str | None = None


def _engine_for(rt: Runtime, sel: Selection) -> Engine:
    if is_remote(sel.engine):
        return rt.remote
    if rt.local is None:
        raise EngineUnavailable(
            f"the local model is not loaded: {rt.local_error}",
            hint="use_lora=false answers with the remote engine; or fix BASE_MODEL_NAME, restart",
        )
    return rt.local


def _params(rt: Runtime, req: AskRequest) -> GenerationParams:
    return request_params(
        rt.settings,
        # MAX_NEW_TOKENS caps every answer; ASK_MAX_NEW_TOKENS is /ask's shorter default.
        max_tokens=req.max_new_tokens
        or min(rt.settings.ask_max_new_tokens, rt.settings.max_new_tokens),
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k_sampling,
        stop=req.stop,
        seed=req.seed,
        repetition_penalty=req.repetition_penalty,
    )


def validate_query(rt: Runtime, query: str) -> str:
    """Reject empty or oversized questions with a message naming the limit."""
    q = query.strip()
    if not q:
        raise InvalidInput("query is empty; ask a question")
    limit = rt.settings.max_query_chars
    if len(q) > limit:
        raise InvalidInput(f"query has {len(q)} characters; the limit is {limit} (MAX_QUERY_CHARS)")
    return q


def sources_of(chunks: list[RetrievedChunk]) -> list[dict[str, Any]]:
    """Citable source records, numbered as in the prompt."""
    return [
        {
            "index": i,
            "source": c.source,
            "doc_id": c.doc_id,
            "chunk": c.position,
            "start": c.start,
            "end": c.end,
            "score": round(float(c.score), 4),
            "content": c.text,
            "collection": c.collection,
            "quote": c.quote,
            "quote_start": c.quote_start,
            "quote_end": c.quote_end,
            "vector_score": None if c.vector_score is None else round(c.vector_score, 4),
            "bm25_score": None if c.bm25_score is None else round(c.bm25_score, 4),
        }
        for i, c in enumerate(chunks, start=1)
    ]


@dataclass
class _Prepared:
    """A validated question: what answers it, the retrieved chunks and the prompt."""

    req: AskRequest
    sel: Selection
    engine: Engine
    params: GenerationParams
    chunks: list[RetrievedChunk]
    messages: list[dict[str, str]]
    started: float


def _prepare(rt: Runtime, req: AskRequest) -> _Prepared:
    """Everything before generation; every refusal of a request happens here."""
    started = time.perf_counter()
    query = validate_query(rt, req.query)
    req = apply_assistant(rt, req)
    params = _params(rt, req)
    sel = choose(rt, engine=req.engine, adapter=req.adapter, use_lora=req.use_lora)
    engine = _engine_for(rt, sel)
    k = req.top_k or rt.settings.retrieval_top_k
    chunks: list[RetrievedChunk] = []
    if req.use_retrieval:
        names: list[str | None] = list(req.collections) or [req.collection]
        chunks = retrieve_for(rt, names, query, k, req.retrieval_mode)
        messages = build_rag_messages(query, chunks, system_prompt=req.system_prompt)
    else:
        # An assistant without knowledge bases is a plain chat with its persona.
        messages = [{"role": "system", "content": req.system_prompt or DEFAULT_SYSTEM_PROMPT}]
        messages.append({"role": "user", "content": query})
    # Earlier turns of a chat go between the instructions and the current question.
    messages[1:1] = req.history
    return _Prepared(req, sel, engine, params, chunks, messages, started)


def _fallback_allowed(rt: Runtime, sel: Selection) -> bool:
    # The seed's rule: when Ollama (any remote) is down and the local model is the default,
    # answer locally.
    return is_remote(sel.engine) and rt.local is not None and rt.settings.use_lora_default


def _falling_back(rt: Runtime, exc: EngineUnavailable) -> tuple[Selection, str]:
    sel = local_fallback(rt)
    log.warning("falling back to the local model (%s): %s", sel.adapter or "base", exc)
    what = f"adapter {sel.adapter}" if sel.adapter else "the base model"
    return sel, f"{exc.message}; answered by the local model instead ({what})"


def ask(rt: Runtime, req: AskRequest) -> AskResult:
    """Answer one question from the knowledge base, citing the chunks used."""
    p = _prepare(rt, req)
    sel, fallback = p.sel, None
    try:
        result = p.engine.generate(p.messages, p.params, adapter=sel.adapter)
    except EngineUnavailable as exc:
        if not _fallback_allowed(rt, sel):
            raise
        sel, fallback = _falling_back(rt, exc)
        assert rt.local is not None
        result = rt.local.generate(p.messages, p.params, adapter=sel.adapter)
    return AskResult(
        answer=result.text.strip(),
        source_documents=sources_of(p.chunks),
        model_used=sel.model_used,
        processing_time=round(time.perf_counter() - p.started, 3),
        engine=sel.engine,
        adapter=sel.adapter,
        fallback=fallback,
        assistant=p.req.assistant,
        usage={
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
        },
    )


@dataclass
class AskStream:
    """A streamed answer: who answers and the sources are known before the first piece;
    `usage` and `processing_time` once the pieces are consumed."""

    source_documents: list[dict[str, Any]]
    model_used: str
    engine: str
    adapter: str | None
    fallback: str | None
    assistant: str | None
    pieces: Iterator[str]
    usage: dict[str, int] = field(default_factory=dict)
    processing_time: float = 0.0
    # The engine's stream the pieces are read from.
    source: AnswerStream | None = None

    def close(self) -> None:
        """Stop generating (the client went away)."""
        if self.source is not None:
            self.source.close()


def ask_stream(rt: Runtime, req: AskRequest) -> AskStream:
    """Like `ask`, streamed; bad input and an unreachable engine raise here, before any piece.

    A remote engine is asked for its first piece before this returns, so that the local
    fallback (the seed's rule) can still take over.
    """
    p = _prepare(rt, req)
    sel, fallback = p.sel, None
    engine: Any = p.engine
    try:
        stream = _open(p, engine, sel)
    except EngineUnavailable as exc:
        if not _fallback_allowed(rt, sel):
            raise
        sel, fallback = _falling_back(rt, exc)
        assert rt.local is not None
        engine = rt.local
        stream = _open(p, engine, sel)
    out = AskStream(
        source_documents=sources_of(p.chunks),
        model_used=sel.model_used,
        engine=sel.engine,
        adapter=sel.adapter,
        fallback=fallback,
        assistant=p.req.assistant,
        pieces=iter(()),
    )

    def counted() -> Iterator[str]:
        yield from stream
        prompt = stream.prompt_tokens or sum(engine.count_tokens(m["content"]) for m in p.messages)
        out.usage = {"prompt_tokens": int(prompt), "completion_tokens": stream.completion_tokens}
        out.processing_time = round(time.perf_counter() - p.started, 3)

    out.pieces, out.source = counted(), stream
    return out


def _open(p: _Prepared, engine: Any, sel: Selection) -> AnswerStream:
    pieces = engine.stream(p.messages, p.params, adapter=sel.adapter)
    if is_remote(sel.engine):
        pieces = CountedPieces(pieces, p.params.max_new_tokens).prime()
    return AnswerStream(pieces, engine, p.params.max_new_tokens, 0)


def apply_assistant(rt: Runtime, req: AskRequest) -> AskRequest:
    """The request with the assistant's settings filled in where the request left them unset."""
    if not req.assistant:
        return req
    a = assistants.get_assistant(rt, req.assistant)
    gen, ret = a.generation, a.retrieval
    return replace(
        req,
        engine=req.engine or (None if req.use_lora is not None or req.adapter else a.engine),
        adapter=req.adapter if req.adapter or req.use_lora is not None else a.adapter,
        # A caller's system message adds to the assistant's persona instead of replacing it.
        system_prompt="\n\n".join(p for p in (a.system_prompt, req.system_prompt) if p) or None,
        collections=list(a.collections) if req.collection is None else [req.collection],
        use_retrieval=bool(a.collections) or req.collection is not None,
        top_k=req.top_k or ret.get("top_k"),
        retrieval_mode=req.retrieval_mode or ret.get("mode"),
        max_new_tokens=req.max_new_tokens or gen.get("max_new_tokens"),
        temperature=req.temperature if req.temperature is not None else gen.get("temperature"),
        top_p=req.top_p if req.top_p is not None else gen.get("top_p"),
        top_k_sampling=req.top_k_sampling if req.top_k_sampling is not None else gen.get("top_k"),
        stop=list(req.stop) or list(gen.get("stop", [])),
    )

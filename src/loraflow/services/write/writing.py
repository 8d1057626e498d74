"""Story generation: prompt or continue, with story memory injected under a token budget.

The local engine continues raw text (the way a LoRA trained on novel chunks writes); Ollama
gets the same text as a chat turn. After generating, the passage is stored with the project
(so "continue" and every client see one history), memory suggestions are extracted and the
continuity check runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from loraflow.engines.base import GenerationParams
from loraflow.engines.remote import is_remote
from loraflow.errors import EngineUnavailable, InvalidInput
from loraflow.memory import inbox, projects, store
from loraflow.memory.entries import check_text
from loraflow.memory.render import memory_block
from loraflow.memory.story import add_passage, story_tail
from loraflow.memory.suggestions import suggest
from loraflow.services.catalog.generation import request_params
from loraflow.services.catalog.names import choose
from loraflow.services.catalog.selection import Selection
from loraflow.services.runtime import Runtime
from loraflow.services.write.memory import (
    activation_for,
    activation_report,
    approx_tokens,
    continuity_flags,
)

Mode = Literal["prompt", "continue"]
MAX_PROMPT_CHARS = 20_000
SYSTEM = {
    "en": "You are a novelist. Continue the story from where the text stops, in the same "
    "language and style. Reply with story text only.",
    "zh": "你是一位小说作者。请从文本结束处接着写下去，保持相同的语言和文风，只输出故事正文。",
}


@dataclass
class WriteRequest:
    """One generation request of the writing studio."""

    prompt: str = ""
    mode: Mode = "prompt"
    project: str | None = None
    use_memory: bool = True
    engine: Literal["local", "remote", "ollama", "openai"] | None = None
    adapter: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    memory_budget: int | None = None
    save: bool = True
    suggest: bool = True


@dataclass
class Plan:
    """Everything decided before the first token: engine, prompt, memory, parameters."""

    req: WriteRequest
    selection: Selection
    params: GenerationParams
    project_id: str | None
    context: str
    full_prompt: str
    language: str
    memory: dict[str, Any] | None
    started: float


def _params(rt: Runtime, req: WriteRequest) -> GenerationParams:
    return request_params(
        rt.settings,
        max_tokens=req.max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        stop=req.stop,
        seed=req.seed,
        repetition_penalty=req.repetition_penalty,
    )


def plan(rt: Runtime, req: WriteRequest) -> Plan:
    """Validate the request and assemble the prompt; raises before any generation."""
    started = time.perf_counter()
    if req.mode not in ("prompt", "continue"):
        raise InvalidInput(f"mode {req.mode!r} is not one of 'prompt', 'continue'")
    if len(req.prompt) > MAX_PROMPT_CHARS:
        raise InvalidInput(
            f"prompt has {len(req.prompt)} characters; the limit is {MAX_PROMPT_CHARS}"
        )
    if req.prompt.strip():
        check_text(req.prompt, "prompt", MAX_PROMPT_CHARS)
    params = _params(rt, req)
    sel = choose(rt, engine=req.engine, adapter=req.adapter)
    if sel.engine == "local" and rt.local is None:
        raise EngineUnavailable(f"the local model is not loaded: {rt.local_error}")
    project_id = projects.get_project(rt.db, req.project).id if req.project else None
    context = req.prompt
    if req.mode == "continue":
        if project_id is None:
            raise InvalidInput("mode 'continue' needs a project whose story to continue")
        context = story_tail(rt.db, project_id, rt.settings.write_context_chars) + req.prompt
    if not context.strip():
        what = "the project has no story yet and no prompt was given"
        raise InvalidInput(f"nothing to write from: {what}" if project_id else "prompt is empty")
    memory, block, language = None, "", "en"
    if req.use_memory and project_id is not None:
        counter = rt.local.count_tokens if rt.local is not None else approx_tokens
        act, language = activation_for(rt, project_id, context, counter, req.memory_budget)
        memory = activation_report(act)
        block = memory_block([c.entry for c in act.used], language)
    full = f"{block}\n\n{context}" if block else context
    return Plan(req, sel, params, project_id, context, full, language, memory, started)


def _pieces(rt: Runtime, p: Plan) -> Iterator[str]:
    """Text pieces from the chosen engine (input errors raise on this call)."""
    if is_remote(p.selection.engine):
        system = SYSTEM["zh" if p.language == "zh" else "en"]
        messages = [
            {"role": "system", "content": system},
            {"role": "user", "content": p.full_prompt},
        ]
        return rt.remote.stream(messages, p.params, adapter=p.selection.adapter)
    if rt.local is None:
        raise EngineUnavailable(f"the local model is not loaded: {rt.local_error}")
    return rt.local.stream_text(p.full_prompt, p.params, adapter=p.selection.adapter)


def _finish(rt: Runtime, p: Plan, text: str) -> dict[str, Any]:
    """Store the passage, extract suggestions, check continuity; the result fields."""
    passage_id = None
    suggestions: list[dict[str, Any]] = []
    continuity: list[dict[str, Any]] = []
    if p.project_id is not None and text.strip():
        if p.req.save:
            meta = {
                "mode": p.req.mode,
                "engine": p.selection.engine,
                "adapter": p.selection.adapter,
            }
            stored_prompt = p.req.prompt
            passage_id = add_passage(rt.db, p.project_id, stored_prompt, text, meta)
        if p.req.suggest:
            found = suggest(text, store.list_entries(rt.db, p.project_id))
            saved = inbox.save_suggestions(rt.db, p.project_id, found)
            suggestions = [asdict(s) for s in saved]
        continuity = continuity_flags(rt, p.project_id, text)
    counter = rt.local.count_tokens if rt.local is not None else approx_tokens
    return {
        "text": text,
        "project": p.req.project,
        "mode": p.req.mode,
        "engine": p.selection.engine,
        "adapter": p.selection.adapter,
        "model_used": p.selection.model_used,
        "memory": p.memory,
        "suggestions": suggestions,
        "continuity": continuity,
        "passage_id": passage_id,
        "usage": {"prompt_tokens": counter(p.full_prompt), "completion_tokens": counter(text)},
        "processing_time": round(time.perf_counter() - p.started, 3),
    }


def write(rt: Runtime, req: WriteRequest) -> dict[str, Any]:
    """Generate in one piece and return the text with memory, suggestions and continuity."""
    p = plan(rt, req)
    pieces = _pieces(rt, p)
    try:
        text = "".join(pieces)
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()
    return _finish(rt, p, text)


@dataclass
class WriteStream:
    """Events of a streamed generation: memory first, then text pieces, then done."""

    events: Iterator[dict[str, Any]]
    close: Any


def write_stream(rt: Runtime, req: WriteRequest) -> WriteStream:
    """Like `write`, as events; bad input raises here, before anything is sent."""
    p = plan(rt, req)
    pieces = _pieces(rt, p)

    def events() -> Iterator[dict[str, Any]]:
        yield {
            "type": "memory",
            "memory": p.memory,
            "engine": p.selection.engine,
            "adapter": p.selection.adapter,
        }
        parts: list[str] = []
        for piece in pieces:
            parts.append(piece)
            yield {"type": "text", "text": piece}
        yield {"type": "done", **_finish(rt, p, "".join(parts))}

    def close() -> None:
        stop = getattr(pieces, "close", None)
        if stop is not None:
            stop()

    return WriteStream(events(), close)

"""POST /ask: question answering over the knowledge base with cited sources."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any, Literal

from fastapi import Response
from pydantic import BaseModel, Field

from loraflow.api.deps import RuntimeDep
from loraflow.api.json_body import json_router
from loraflow.api.schemas.common import SourceDocument
from loraflow.api.streaming import stream_response
from loraflow.errors import LoraflowError
from loraflow.services.know.ask import AskRequest, AskStream, ask, ask_stream
from loraflow.services.runtime import Runtime

router = json_router(tags=["ask"])


class AskBody(BaseModel):
    query: str = Field(..., description="The question.", examples=["What is loraflow?"])
    use_lora: bool | None = Field(
        None,
        description="true: local model + adapter; false: the remote engine (REMOTE_BACKEND); "
        "absent: current selection.",
    )
    adapter: str | None = Field(None, description="Answer with this loaded adapter.")
    top_k: int | None = Field(None, ge=1, le=50, description="How many chunks to retrieve.")
    max_new_tokens: int | None = Field(None, ge=1, le=32768)
    temperature: float | None = Field(None, ge=0.0, le=5.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: list[str] = Field(default_factory=list, description="Stop strings (not empty).")
    seed: int | None = None
    repetition_penalty: float | None = Field(
        None, gt=0.0, le=10.0, description="Default: REPETITION_PENALTY (1.0 = off)."
    )
    collection: str | None = Field(None, description="Knowledge base to search; default 'default'.")
    assistant: str | None = Field(None, description="Answer as this assistant.")
    retrieval_mode: Literal["hybrid", "vector", "bm25"] | None = Field(
        None, description="Override RETRIEVAL_MODE for this question."
    )
    stream: bool = Field(
        False,
        description="true: answer as NDJSON lines while it is generated — first "
        '{"type": "sources", ...} (who answers and the cited sources), then '
        '{"type": "text", "text": ...} pieces, then {"type": "done", "usage": ..., '
        '"processing_time": ...}; an error after the first line arrives as '
        '{"type": "error", "detail": ...}.',
    )


class AskResponse(BaseModel):
    answer: str
    source_documents: list[SourceDocument]
    model_used: str
    processing_time: float
    engine: str
    adapter: str | None
    fallback: str | None = None
    usage: dict[str, int]
    assistant: str | None = None


@router.post(
    "/ask",
    response_model=AskResponse,
    summary="Answer a question with sources",
    responses={200: {"content": {"application/x-ndjson": {}}}},
)
def ask_route(body: AskBody, rt: RuntimeDep) -> Any:
    fields = body.model_dump()
    streamed = fields.pop("stream")
    if streamed:
        return _streamed(rt, ask_stream(rt, AskRequest(**fields)))
    result = ask(rt, AskRequest(**fields))
    _count(rt, result.engine, result.adapter, result.usage)
    return asdict(result)


def _count(rt: Runtime, engine: str, adapter: str | None, usage: dict[str, int]) -> None:
    used = adapter or (engine if engine != "local" else rt.settings.base_model_name)
    rt.usage.record(used, usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))


def _streamed(rt: Runtime, answer: AskStream) -> Response:
    def lines() -> Iterator[str]:
        head = {
            "type": "sources",
            "source_documents": answer.source_documents,
            "model_used": answer.model_used,
            "engine": answer.engine,
            "adapter": answer.adapter,
            "fallback": answer.fallback,
            "assistant": answer.assistant,
        }
        yield _line(head)
        try:
            for piece in answer.pieces:
                yield _line({"type": "text", "text": piece})
        except LoraflowError as exc:
            yield _line({"type": "error", "detail": exc.message})
            return
        _count(rt, answer.engine, answer.adapter, answer.usage)
        done = {"type": "done", "usage": answer.usage, "processing_time": answer.processing_time}
        yield _line(done)

    return stream_response(lines(), answer.close, "application/x-ndjson")


def _line(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False) + "\n"

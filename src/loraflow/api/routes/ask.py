"""POST /ask: question answering over the knowledge base with cited sources."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

from pydantic import BaseModel, Field

from loraflow.api.deps import RuntimeDep
from loraflow.api.json_body import json_router
from loraflow.services.know.ask import AskRequest, ask

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
    collection: str | None = Field(None, description="Knowledge base to search; default 'default'.")
    assistant: str | None = Field(None, description="Answer as this assistant.")
    retrieval_mode: Literal["hybrid", "vector", "bm25"] | None = Field(
        None, description="Override RETRIEVAL_MODE for this question."
    )


class SourceDocument(BaseModel):
    index: int
    source: str
    doc_id: str
    chunk: int
    start: int
    end: int
    score: float
    content: str
    collection: str | None = None
    quote: str | None = Field(None, description="The sentence of the chunk that best matches.")
    quote_start: int | None = None
    quote_end: int | None = None
    vector_score: float | None = None
    bm25_score: float | None = None


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


@router.post("/ask", response_model=AskResponse, summary="Answer a question with sources")
def ask_route(body: AskBody, rt: RuntimeDep) -> dict[str, Any]:
    result = ask(rt, AskRequest(**body.model_dump()))
    used = result.adapter or (
        result.engine if result.engine != "local" else rt.settings.base_model_name
    )
    rt.usage.record(
        used, result.usage.get("prompt_tokens", 0), result.usage.get("completion_tokens", 0)
    )
    return asdict(result)

"""POST /api/write and /api/write/stream: story generation with memory."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal

from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from loraflow.api.deps import RuntimeDep
from loraflow.api.json_body import json_router
from loraflow.api.schemas.memory import WriteResult
from loraflow.api.streaming import stream_response
from loraflow.errors import LoraflowError
from loraflow.services.write.writing import WriteRequest, write, write_stream

router = json_router(prefix="/api/write", tags=["writing"])


class WriteBody(BaseModel):
    prompt: str = Field("", description="Text the model continues (in 'continue': appended).")
    mode: Literal["prompt", "continue"] = Field(
        "prompt", description="continue: go on from the project's stored story."
    )
    project: str | None = Field(None, description="Story project (id or name) for memory.")
    use_memory: bool = True
    engine: Literal["local", "remote", "ollama", "openai"] | None = Field(
        None, description="Default: the model selected with /switch_model."
    )
    adapter: str | None = Field(None, description="A loaded LoRA adapter (local engine).")
    max_tokens: int | None = Field(None, ge=1, le=32768)
    temperature: float | None = Field(None, ge=0.0, le=5.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(
        None, gt=0.0, le=10.0, description="Default: REPETITION_PENALTY (1.0 = off)."
    )
    stop: list[str] = Field(default_factory=list, description="Stop strings; not empty.")
    seed: int | None = None
    memory_budget: int | None = Field(None, ge=0, description="Override MEMORY_TOKEN_BUDGET.")
    save: bool = Field(True, description="Append the passage to the project's story.")
    suggest: bool = Field(True, description="Extract memory suggestions from the text.")


@router.post(
    "",
    response_model=WriteResult,
    response_model_exclude_unset=True,
    summary="Write: generate story text with memory",
)
def write_route(body: WriteBody, rt: RuntimeDep) -> dict[str, Any]:
    return write(rt, WriteRequest(**body.model_dump()))


@router.post(
    "/stream",
    responses={200: {"content": {"application/x-ndjson": {}}, "description": "NDJSON events."}},
    summary="Write, streamed as NDJSON events: memory, text..., done (or error)",
    response_class=StreamingResponse,
)
def write_stream_route(body: WriteBody, rt: RuntimeDep) -> StreamingResponse:
    stream = write_stream(rt, WriteRequest(**body.model_dump()))

    def lines() -> Iterator[str]:
        try:
            for event in stream.events:
                yield json.dumps(event, ensure_ascii=False) + "\n"
        except LoraflowError as exc:  # headers are sent: the error travels as an event
            yield json.dumps({"type": "error", "detail": exc.message}, ensure_ascii=False) + "\n"

    return stream_response(lines(), stream.close, "application/x-ndjson")

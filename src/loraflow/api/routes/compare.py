"""POST /api/compare: one prompt to the base model and up to three adapters, side by side."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

from pydantic import BaseModel, Field

from loraflow.api.deps import RuntimeDep
from loraflow.api.json_body import json_router
from loraflow.errors import InvalidInput
from loraflow.services.serve.compare import MAX_ADAPTERS, CompareRequest, compare

router = json_router(prefix="/api", tags=["chat"])


class CompareMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class CompareBody(BaseModel):
    prompt: str | None = Field(
        None, min_length=1, description="The user message (or give `messages`)."
    )
    messages: list[CompareMessage] | None = Field(
        None, min_length=1, description="A whole chat ending with a user message."
    )
    adapters: list[str] = Field(
        default_factory=list,
        max_length=MAX_ADAPTERS,
        description=f"Up to {MAX_ADAPTERS} adapters (registered ones are attached first).",
    )
    include_base: bool = Field(True, description="Answer with the base model too (first).")
    max_tokens: int | None = Field(None, ge=1, le=4096)
    temperature: float | None = Field(None, ge=0.0, le=5.0)
    seed: int | None = None


class CompareAnswerModel(BaseModel):
    model: str
    kind: Literal["base", "adapter"]
    text: str
    seconds: float = Field(description="From the start until this answer's last token.")
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    error: str | None = Field(description="Why this model did not answer, if it did not.")


class CompareResponse(BaseModel):
    answers: list[CompareAnswerModel]
    seconds: float = Field(description="Wall time for all answers, generated at once.")


@router.post(
    "/compare",
    response_model=CompareResponse,
    summary="One prompt to the base model and up to 3 adapters at once, answers side by side",
)
def compare_route(body: CompareBody, rt: RuntimeDep) -> dict[str, Any]:
    if (body.prompt is None) == (body.messages is None):
        raise InvalidInput("give either `prompt` or `messages`")
    messages = (
        [{"role": "user", "content": body.prompt}]
        if body.prompt is not None
        else [m.model_dump() for m in body.messages or []]
    )
    req = CompareRequest(
        messages=messages,
        adapters=body.adapters,
        include_base=body.include_base,
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        seed=body.seed,
    )
    answers = compare(rt, req)
    return {
        "answers": [asdict(a) for a in answers],
        "seconds": max((a.seconds for a in answers), default=0.0),
    }

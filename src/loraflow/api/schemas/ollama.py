"""Ollama-compatible responses (/api/chat, /api/generate, ...): Ollama's field names."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from loraflow.api.schemas.common import SourceDocument


class Message(BaseModel):
    role: str
    content: str


class ChatResponse(BaseModel):
    """With stream: false; streamed, each NDJSON line has this shape (the last has done)."""

    model: str
    created_at: str
    message: Message
    done: bool
    done_reason: str | None = Field(None, description="stop, length, or load (empty prompt).")
    total_duration: int | None = Field(None, description="Nanoseconds.")
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None
    sources: list[SourceDocument] | None = Field(
        None, description="With rag: true, the knowledge-base chunks the answer used."
    )


class GenerateResponse(BaseModel):
    """With stream: false; streamed, each NDJSON line has this shape (the last has done)."""

    model: str
    created_at: str
    response: str
    done: bool
    done_reason: str | None = Field(None, description="stop, length, or load (empty prompt).")
    total_duration: int | None = Field(None, description="Nanoseconds.")
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None
    sources: list[SourceDocument] | None = Field(
        None, description="With rag: true, the knowledge-base chunks the answer used."
    )


class ModelDetails(BaseModel):
    parent_model: str
    format: str
    family: str
    families: list[str]
    parameter_size: str
    quantization_level: str


class ModelTag(BaseModel):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: ModelDetails


class TagList(BaseModel):
    models: list[ModelTag]


class ShowResponse(BaseModel):
    modelfile: str
    parameters: str
    template: str
    details: ModelDetails
    model_info: dict[str, Any] = Field(description="Key/value facts, e.g. general.basename.")
    capabilities: list[str]
    modified_at: str


class EmbedResponse(BaseModel):
    model: str
    embeddings: list[list[float]]
    total_duration: int
    load_duration: int
    prompt_eval_count: int


class LegacyEmbedResponse(BaseModel):
    embedding: list[float]


class Version(BaseModel):
    version: str

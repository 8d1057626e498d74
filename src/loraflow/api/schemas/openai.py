"""OpenAI-compatible responses (/v1): OpenAI's field names and wire shapes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from loraflow.api.schemas.common import SourceDocument


class Model(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    # loraflow's additions (absent for a model known only by name, e.g. a remote one).
    root: str | None = Field(None, description="The base model, or the adapter's folder.")
    parent: str | None = Field(None, description="The model an adapter or assistant builds on.")
    kind: str | None = Field(None, description="base, adapter, assistant, remote or embedding.")
    attached: bool | None = Field(
        None,
        description="Adapters: held by the local engine now; a registered one that is not "
        "is attached on its first request.",
    )


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[Model]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatMessage
    finish_reason: str | None = Field(description="stop or length.")
    logprobs: dict[str, Any] | None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    system_fingerprint: str | None
    choices: list[ChatChoice]
    usage: Usage
    sources: list[SourceDocument] | None = Field(
        None, description="With rag: true, the knowledge-base chunks the answer used."
    )


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: dict[str, Any] | None
    finish_reason: str | None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    system_fingerprint: str | None
    choices: list[CompletionChoice]
    usage: Usage


class Embedding(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str = Field(description="Floats, or base64 little-endian float32.")


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class BatchStats(BaseModel):
    batching: bool = Field(description="The local engine batches requests.")
    max_batch_size: int
    running: int = Field(description="Requests decoding now.")
    waiting: int = Field(description="Requests waiting to join the batch.")

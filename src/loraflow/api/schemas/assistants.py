"""Assistants."""

from __future__ import annotations

from pydantic import BaseModel, Field


class GenerationDefaults(BaseModel):
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: list[str] | None = None


class RetrievalDefaults(BaseModel):
    top_k: int | None = None
    mode: str | None = None
    notices: list[str] | None = Field(
        None, description="Knowledge bases deleted since the last change of the assistant."
    )


class Assistant(BaseModel):
    name: str
    engine: str
    adapter: str | None
    system_prompt: str
    description: str
    collections: list[str]
    generation: GenerationDefaults
    retrieval: RetrievalDefaults
    created_at: str
    updated_at: str


class AssistantList(BaseModel):
    assistants: list[Assistant]
    count: int


class DeletedAssistant(BaseModel):
    deleted: Assistant

"""Small shapes several areas share."""

from __future__ import annotations

from pydantic import BaseModel, Field


class SourceDocument(BaseModel):
    """A retrieved chunk cited by an answer (/ask, and `sources` of the chat APIs with rag)."""

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


class TokenUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int

"""Knowledge bases (collections), their documents and search."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class DocumentInfo(BaseModel):
    doc_id: str
    source: str
    sha256: str
    n_chunks: int
    chars: int
    added_at: str


class FailedFile(BaseModel):
    source: str
    reason: str


class IngestReport(BaseModel):
    added: list[DocumentInfo] = Field(description="New documents, new versions included.")
    replaced: list[str] = Field(description="Sources whose older version was replaced.")
    unchanged: list[str] = Field(description="Sources already stored with the same text.")
    failed: list[FailedFile]


class DocumentList(BaseModel):
    documents: list[DocumentInfo]
    count: int


class DeletedDocument(BaseModel):
    deleted: DocumentInfo


class CollectionInfo(BaseModel):
    id: str
    name: str
    embedding_model: str
    chunk_size: int
    chunk_overlap: int
    index_dir: str
    reembed: dict[str, Any] | None = Field(
        description="A re-embed in progress (target model, folder, progress); null when none."
    )
    created_at: str
    is_default: bool


class Collection(CollectionInfo):
    documents: int | None = Field(description="null when the index cannot be read.")
    chunks: int | None
    status: str = Field(description="'ready', or 'error: ...'.")
    assistants: list[str] = Field(description="Assistants that search this knowledge base.")


class CollectionList(BaseModel):
    collections: list[Collection]
    count: int


class DeletedCollection(BaseModel):
    deleted: CollectionInfo
    detached_assistants: list[str]


class SearchResult(BaseModel):
    text: str
    source: str
    doc_id: str
    position: int = Field(description="The chunk's position in its document.")
    score: float
    start: int
    end: int
    vector_score: float | None
    bm25_score: float | None
    collection: str | None
    quote: str | None = Field(description="The sentence of the chunk that best matches.")
    quote_start: int | None
    quote_end: int | None


class SearchResults(BaseModel):
    results: list[SearchResult]
    count: int

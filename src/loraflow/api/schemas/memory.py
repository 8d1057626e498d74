"""Story memory: projects, entries, activation, suggestions, continuity, story; writing."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from loraflow.api.schemas.common import TokenUsage


class Project(BaseModel):
    id: str
    name: str
    description: str
    created_at: str
    updated_at: str


class ProjectInfo(Project):
    entries: int = Field(description="Current memory entries.")
    max_entries: int = Field(description="MAX_MEMORY_ITEMS")
    pending_suggestions: int
    passages: int = Field(description="Passages of the story text.")


class ProjectList(BaseModel):
    projects: list[ProjectInfo]
    count: int


class MemoryEntry(BaseModel):
    """One version of a memory entry; `entry_id` ties a fact's versions together."""

    id: str
    entry_id: str
    project_id: str
    version: int
    current: bool = Field(description="Only the current version is injected.")
    kind: str
    title: str
    content: str
    keywords: list[str]
    importance: int
    always_on: bool
    chapter: int | None
    position: int | None
    note: str | None = Field(description="Why the fact changed (superseded versions).")
    created_at: str
    updated_at: str


class MemoryEntryWithHistory(MemoryEntry):
    history: list[MemoryEntry] = Field(description="Every version, oldest first.")


class EntryList(BaseModel):
    entries: list[MemoryEntry]
    count: int


class ActivatedEntry(BaseModel):
    entry_id: str
    version: int
    kind: str
    title: str
    reason: Literal["always_on", "keyword", "semantic"]
    matched: list[str] = Field(description="The keywords that matched.")
    score: float | None = Field(description="Semantic similarity, when that matched.")
    importance: int
    tokens: int
    dropped_for: Literal["budget"] | None = Field(None, description="Only in `dropped`.")


class ActivationReport(BaseModel):
    budget: int
    tokens_used: int
    used: list[ActivatedEntry]
    dropped: list[ActivatedEntry] = Field(description="Matched, but over the token budget.")


class ActivationPreview(ActivationReport):
    language: str


class Suggestion(BaseModel):
    kind: str
    title: str
    content: str
    keywords: list[str]
    evidence: str = Field(description="The text the suggestion was found in.")
    language: str
    id: str
    project_id: str
    status: str = Field(description="pending, accepted or rejected.")
    entry_id: str | None = Field(description="The entry an accepted suggestion became.")
    created_at: str


class SuggestionList(BaseModel):
    suggestions: list[Suggestion]
    count: int


class AcceptedSuggestion(BaseModel):
    suggestion: Suggestion
    entry: MemoryEntry


class ContinuityFlag(BaseModel):
    rule: str
    message: str
    sentence: str
    entry_id: str
    entry_title: str


class ContinuityReport(BaseModel):
    flags: list[ContinuityFlag]
    count: int


class Passage(BaseModel):
    id: int
    project_id: str
    prompt: str
    text: str
    meta: dict[str, Any] = Field(description="How it was written (mode, engine, adapter).")
    created_at: str


class Story(BaseModel):
    project: str
    text: str
    passages: list[Passage]


class DeletedStory(BaseModel):
    deleted: int = Field(description="Passages deleted.")


class EntryFields(BaseModel):
    kind: str
    title: str
    content: str
    keywords: list[str]
    importance: int
    always_on: bool
    chapter: int | None
    position: int | None


class ExportedVersion(EntryFields):
    version: int
    created_at: str


class ExportedEntry(EntryFields):
    version: int
    note: str | None
    history: list[ExportedVersion] = Field(description="Superseded versions, oldest first.")


class ExportedProject(BaseModel):
    name: str
    description: str


class ProjectExport(BaseModel):
    """A project's memory; POST /api/memory/import takes it back."""

    format: Literal["loraflow.memory"]
    version: int
    project: ExportedProject
    entries: list[ExportedEntry]


class WriteResult(BaseModel):
    text: str
    project: str | None
    mode: str
    engine: str
    adapter: str | None
    model_used: str
    memory: ActivationReport | None = Field(description="The entries injected; null without.")
    suggestions: list[Suggestion]
    continuity: list[ContinuityFlag]
    passage_id: int | None = Field(description="The stored passage, when saved.")
    usage: TokenUsage
    processing_time: float

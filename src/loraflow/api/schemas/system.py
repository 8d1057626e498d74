"""/health and /model_info."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class HealthComponents(BaseModel):
    rag_handler: bool = Field(description="The knowledge base and some engine can answer.")
    vector_store: bool
    lora_model: bool = Field(description="At least one adapter is loaded.")
    ollama_service: bool = Field(description="The remote engine (REMOTE_BACKEND) answers.")


class SelectionSummary(BaseModel):
    base_model: str
    using_lora: bool
    engine: str
    adapter: str | None


class Replica(BaseModel):
    url: str
    healthy: bool = Field(description="Answering and not ejected after a failure.")
    outstanding: int = Field(description="Requests in flight there now.")
    ejected_for_s: float = Field(description="Seconds until an ejected replica is tried again.")
    error: str | None
    missing_adapters: list[str] = Field(
        description="Deployed adapters it does not serve yet (reloaded by the next poll)."
    )


class HealthDetails(BaseModel):
    model_info: SelectionSummary
    local_model: str | None = Field(description="'loaded', or why the local model is not.")
    local_engine: str | None = Field(
        description="The loaded local engine in words: model, device, precision, adapters "
        "(LOCAL_ENGINE=hybrid: how many requests llama.cpp and the batch answered).",
    )
    lora_model: str
    ollama_service: str = Field(description="The remote engine's state, whichever backend.")
    remote_backend: Literal["ollama", "openai"]
    remote_base_url: str
    remote_model: str
    vector_store: str
    database: str
    documents: int
    chunks: int
    warnings: list[str]
    optional: dict[str, str] = Field(
        description="Components that are down but not needed by the current selection, and "
        "why (e.g. no Ollama while the local model answers).",
    )
    replicas: list[Replica] = Field(
        description="REMOTE_BACKEND=openai: each replica of the fleet; otherwise empty."
    )


class Health(BaseModel):
    status: Literal["healthy", "degraded", "unhealthy"] = Field(
        description="unhealthy (answered with 503): nothing can answer a question."
    )
    components: HealthComponents
    details: HealthDetails


class ModelInfo(BaseModel):
    base_model: str
    lora_model_path: str
    lora_exists: bool
    using_lora: bool
    cache_dir: str
    vector_store_path: str
    embedding_model: str
    engine: str
    adapter: str | None
    model_used: str
    adapters: list[str] = Field(description="Names of the loaded adapters.")
    device: str | None
    local_model_loaded: bool
    local_model_error: str | None
    ollama_base_url: str
    ollama_model: str
    remote_backend: Literal["ollama", "openai"]
    remote_base_url: str
    remote_model: str
    worker_pid: int = Field(description="The server process that answered.")

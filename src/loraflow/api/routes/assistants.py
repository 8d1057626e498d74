"""Assistants: CRUD over named bindings of prompt, model or adapter and knowledge bases."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

from pydantic import BaseModel, Field

from loraflow.api.deps import RuntimeDep
from loraflow.api.json_body import json_router
from loraflow.api.schemas import assistants as S
from loraflow.services.catalog import assistants

router = json_router(prefix="/api/assistants", tags=["assistants"])


class Generation(BaseModel):
    max_new_tokens: int | None = Field(None, ge=1, le=32768)
    temperature: float | None = Field(None, ge=0.0, le=5.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    stop: list[str] | None = None


class Retrieval(BaseModel):
    top_k: int | None = Field(None, ge=1, le=50)
    mode: Literal["hybrid", "vector", "bm25"] | None = None


class AssistantFields(BaseModel):
    engine: Literal["local", "remote", "ollama", "openai"] | None = None
    adapter: str | None = Field(
        None,
        description="Engine local: a LoRA adapter name. Engine openai: one of the remote "
        "server's models or LoRA modules (vLLM).",
    )
    system_prompt: str | None = None
    description: str | None = None
    collections: list[str] | None = Field(None, description="Knowledge bases; [] = none.")
    generation: Generation | None = None
    retrieval: Retrieval | None = None

    def changes(self) -> dict[str, Any]:
        # null means "leave as is", except for adapter, where it means "no adapter".
        out = {
            k: v
            for k, v in self.model_dump(exclude_unset=True).items()
            if v is not None or k == "adapter"
        }
        for key in ("generation", "retrieval"):
            if out.get(key) is not None:
                out[key] = {k: v for k, v in out[key].items() if v is not None}
        return out


class AssistantCreate(AssistantFields):
    name: str


class AssistantUpdate(AssistantFields):
    name: str | None = Field(None, description="A new name.")


@router.get(
    "", response_model=S.AssistantList, response_model_exclude_unset=True, summary="List assistants"
)
def list_all(rt: RuntimeDep) -> dict[str, Any]:
    items = [asdict(a) for a in assistants.list_assistants(rt)]
    return {"assistants": items, "count": len(items)}


@router.post(
    "",
    response_model=S.Assistant,
    response_model_exclude_unset=True,
    status_code=201,
    summary="Create an assistant",
)
def create(body: AssistantCreate, rt: RuntimeDep) -> dict[str, Any]:
    return asdict(assistants.create_assistant(rt, body.changes()))


@router.get(
    "/{name}",
    response_model=S.Assistant,
    response_model_exclude_unset=True,
    summary="One assistant",
)
def get(name: str, rt: RuntimeDep) -> dict[str, Any]:
    return asdict(assistants.get_assistant(rt, name))


@router.patch(
    "/{name}",
    response_model=S.Assistant,
    response_model_exclude_unset=True,
    summary="Change some fields of an assistant",
)
def update(name: str, body: AssistantUpdate, rt: RuntimeDep) -> dict[str, Any]:
    return asdict(assistants.update_assistant(rt, name, body.changes()))


@router.delete(
    "/{name}",
    response_model=S.DeletedAssistant,
    response_model_exclude_unset=True,
    summary="Delete an assistant",
)
def delete(name: str, rt: RuntimeDep) -> dict[str, Any]:
    return {"deleted": asdict(assistants.delete_assistant(rt, name))}

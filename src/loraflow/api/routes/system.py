"""Health, model information and run-time model switching (the seed's contract)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from loraflow.api.deps import RuntimeDep
from loraflow.services import models

router = APIRouter(tags=["system"])


class SwitchModelRequest(BaseModel):
    use_lora: bool | None = Field(
        None, description="true: local model with an adapter; false: the Ollama model."
    )
    engine: Literal["local", "ollama"] | None = Field(
        None, description="Pick the engine explicitly (local with no adapter = base model)."
    )
    adapter: str | None = Field(None, description="Name of a loaded adapter (local engine).")


class SwitchModelResponse(BaseModel):
    message: str
    using_lora: bool
    engine: str
    adapter: str | None
    model_used: str


@router.get("/health", summary="Each component checked for real")
def health(rt: RuntimeDep) -> JSONResponse:
    body = models.health(rt)
    return JSONResponse(body, status_code=503 if body["status"] == "unhealthy" else 200)


@router.get("/model_info", summary="Configured and loaded models")
def model_info(rt: RuntimeDep) -> dict[str, Any]:
    return models.model_info(rt)


@router.post(
    "/switch_model", response_model=SwitchModelResponse, summary="Switch model at run time"
)
def switch_model(body: SwitchModelRequest, rt: RuntimeDep) -> SwitchModelResponse:
    sel = models.switch_model(rt, use_lora=body.use_lora, engine=body.engine, adapter=body.adapter)
    target = {"ollama": f"Ollama model {rt.settings.ollama_model}", "base": "the base model"}.get(
        sel.model_used, f"adapter {sel.adapter!r}"
    )
    return SwitchModelResponse(
        message=f"now answering with {target}",
        using_lora=sel.using_lora,
        engine=sel.engine,
        adapter=sel.adapter,
        model_used=sel.model_used,
    )

"""Health, model information and run-time model switching (the seed's contract)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from loraflow.api.deps import RuntimeDep
from loraflow.api.json_body import json_router
from loraflow.api.schemas.system import Health, ModelInfo
from loraflow.engines.remote import is_remote, label
from loraflow.services.catalog import names as catalog
from loraflow.services.ops import health as health_report

router = json_router(tags=["system"])


class SwitchModelRequest(BaseModel):
    use_lora: bool | None = Field(
        None, description="true: local model with an adapter; false: the remote (Ollama) model."
    )
    engine: Literal["local", "remote", "ollama", "openai"] | None = Field(
        None,
        description="local (no adapter = base model), or remote: the REMOTE_BACKEND server "
        "(ollama and openai are accepted as its names).",
    )
    adapter: str | None = Field(
        None, description="A loaded adapter (local), or one the remote server lists (openai)."
    )


class SwitchModelResponse(BaseModel):
    message: str
    using_lora: bool
    engine: str
    adapter: str | None
    model_used: str


@router.get(
    "/health",
    response_model=Health,
    responses={503: {"model": Health, "description": "Nothing can answer a question."}},
    summary="Each component checked for real",
)
def health(rt: RuntimeDep) -> JSONResponse:
    body = health_report.health(rt)
    return JSONResponse(body, status_code=503 if body["status"] == "unhealthy" else 200)


@router.get("/model_info", response_model=ModelInfo, summary="Configured and loaded models")
def model_info(rt: RuntimeDep) -> dict[str, Any]:
    return health_report.model_info(rt)


@router.post(
    "/switch_model", response_model=SwitchModelResponse, summary="Switch model at run time"
)
def switch_model(body: SwitchModelRequest, rt: RuntimeDep) -> SwitchModelResponse:
    sel = catalog.switch_model(rt, use_lora=body.use_lora, engine=body.engine, adapter=body.adapter)
    if is_remote(sel.engine):
        target = label(rt.settings) + (f" with adapter {sel.adapter!r}" if sel.adapter else "")
    else:
        target = f"adapter {sel.adapter!r}" if sel.adapter else "the base model"
    return SwitchModelResponse(
        message=f"now answering with {target}",
        using_lora=sel.using_lora,
        engine=sel.engine,
        adapter=sel.adapter,
        model_used=sel.model_used,
    )

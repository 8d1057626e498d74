"""Adapter lifecycle: registry, merge, validate, export, deployments, workflows."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import Response
from pydantic import BaseModel, Field

from loraflow.api.deps import RuntimeDep
from loraflow.api.json_body import json_router
from loraflow.api.schemas import adapters as S
from loraflow.errors import Conflict
from loraflow.services.manage import deployments, workflows
from loraflow.services.registry import adapters as adapter_svc
from loraflow.services.registry import attach

router = json_router(prefix="/api/adapters", tags=["adapters"])

WAIT_SECONDS = 3600.0
# Workflow routes answer 202 with the new workflow, or 200 with the finished one (wait).
STARTED: dict[int | str, dict[str, Any]] = {
    202: {"model": S.Workflow, "description": "Started; poll GET /api/adapters/workflows/{id}."}
}


class RegisterBody(BaseModel):
    path: str = Field(..., description="Adapter folder inside the data dir or LORA_MODEL_PATH.")
    name: str | None = Field(None, description="Registry name; default: from the folder.")
    description: str = ""
    tags: list[str] = Field(default_factory=list)


class UpdateBody(BaseModel):
    description: str | None = None
    tags: list[str] | None = None


class MergeSpec(BaseModel):
    adapters: list[str] = Field(..., description="Registered adapter names or ids to merge.")
    method: str = Field(
        "linear",
        description="linear, slerp, task_arithmetic (exact adapters: ranks stacked), ties, "
        "dare_ties or dare_linear (adapters: the dense result factored by truncated SVD, "
        "error per tensor in checks.factoring).",
    )
    weights: list[float] | None = Field(None, description="One weight per adapter.")
    density: float | None = Field(None, description="Share of weights kept (ties, dare).")
    t: float | None = Field(None, description="SLERP interpolation factor in [0, 1].")
    lambda_: float | None = Field(None, alias="lambda", description="Task-vector scale.")
    max_rank: int | None = Field(
        None,
        ge=1,
        description="ties/dare adapters: highest rank of the result (MAX_LORA_RANK caps it too).",
    )
    max_error: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="ties/dare adapters: relative Frobenius error allowed per tensor "
        "(default 0.001); the rank is chosen to meet it.",
    )
    into: Literal["adapter", "model"] = Field(
        "adapter", description="A new registered adapter, or a full merged model folder."
    )
    name: str = Field("merged", description="Name of the result.")
    description: str | None = None
    seed: int | None = Field(
        None,
        description="Seed of DARE's draws (same seed, same adapter); drawn and recorded if unset.",
    )

    model_config = {"populate_by_name": True}

    def spec(self) -> dict[str, Any]:
        d = self.model_dump(exclude_none=True)
        if "lambda_" in d:
            d["lambda"] = d.pop("lambda_")
        return d


class MergeBody(MergeSpec):
    wait: bool = Field(False, description="Answer when the merge has finished.")


class ValidateSpec(BaseModel):
    mode: Literal["quick", "standard", "comprehensive"] = "standard"
    questions: list[dict[str, str]] | None = Field(
        None, description='[{"question", "answer", "match": "contains"|"exact"}]'
    )
    val_file: str | None = Field(
        None, description="A validation split (Alpaca/ShareGPT) in the uploads folder."
    )


class ValidateBody(ValidateSpec):
    wait: bool = False


class ExportBody(BaseModel):
    format: Literal["merged", "gguf", "ollama"] = Field(
        "merged",
        description="merged: full model with the adapter merged in (safetensors); gguf: a "
        "llama.cpp LoRA GGUF + Modelfile; ollama: that, created on the Ollama server.",
    )
    quantization: Literal["8bit", "4bit"] | None = None
    ollama_model: str | None = Field(None, description="Name of the model created in Ollama.")
    ollama_base: str | None = Field(
        None, description="FROM of the Modelfile (default OLLAMA_MODEL)."
    )
    wait: bool = False


class DeploySpec(BaseModel):
    target: str = Field(..., description="The model name clients call, e.g. 'production'.")
    strategy: Literal["replace", "blue_green", "canary", "ab"] = "replace"
    percent: float | None = Field(None, gt=0, le=100, description="Canary's first share.")
    schedule: list[float] | None = Field(None, description="Canary step-up shares, e.g. [5,25,50].")
    step_requests: int | None = Field(None, ge=1, description="Requests per canary step.")
    split: list[float] | None = Field(
        None, min_length=2, max_length=2, description="A/B shares, e.g. [70, 30]."
    )
    force: bool = Field(False, description="Deploy even when the quality gate fails.")
    engine: Literal["local", "remote"] = Field(
        "local",
        description="local: the local engine; remote: the vLLM replicas (OPENAI_BASE_URLS), "
        "loaded there at run time as name@vN.",
    )
    # This deployment's own settings; each left out takes the global DEPLOY_* setting.
    max_error_rate: float | None = Field(
        None, ge=0, le=1, description="Error rate of the canary / B variant that rolls it back."
    )
    max_latency_ratio: float | None = Field(
        None, gt=1, description="p95 latency over the stable variant's that rolls back (1.2: +20%)."
    )
    min_requests: int | None = Field(
        None, ge=1, description="Requests a variant serves before it is judged."
    )
    health_retries: int | None = Field(None, ge=1, le=20, description="Health-check attempts.")
    health_timeout: float | None = Field(None, gt=0, description="Seconds per health check.")
    switch_delay: float | None = Field(
        None, ge=0, le=3600, description="Blue-green: seconds between passing checks and switch."
    )
    ab_duration: float | None = Field(
        None,
        ge=0,
        description="A/B: seconds the test runs; then the variant with the lower error rate "
        "(and p95 latency within max_latency_ratio) takes all traffic. 0: until promoted.",
    )

    def settings(self) -> dict[str, Any]:
        """The per-deployment settings given in this body."""
        from loraflow.adapters.deploy import SETTINGS

        return {k: getattr(self, k) for k in SETTINGS if getattr(self, k) is not None}


class DeployBody(DeploySpec):
    adapter: str = Field(..., description="Registered adapter name, name@vN or id.")


class WorkflowBody(BaseModel):
    merge: MergeSpec | None = None
    adapter: str | None = Field(None, description="The adapter to validate/deploy (no merge).")
    validate_: ValidateSpec | None = Field(None, alias="validate")
    deploy: DeploySpec | None = None
    wait: bool = False

    model_config = {"populate_by_name": True}


class PromoteBody(BaseModel):
    variant: str | None = Field(None, description="Variant to promote; default the candidate.")


def _submit(rt: RuntimeDep, kind: str, spec: dict[str, Any], wait: bool, response: Response):
    wf = workflows.start(rt, kind, spec)
    if wait:
        return workflows.wait(rt, wf["id"], WAIT_SECONDS)
    response.status_code = 202
    return wf


# --- registry --------------------------------------------------------------------------------
@router.get("", response_model=S.AdapterList, summary="List registered adapters")
def list_adapters(rt: RuntimeDep, name: str | None = None) -> dict[str, Any]:
    items = [r.to_dict() for r in adapter_svc.list_adapters(rt, name=name)]
    return {"adapters": items, "count": len(items)}


@router.post(
    "/scan",
    response_model=S.ScanReport,
    summary="Register new adapter folders; flag changed or missing ones",
)
def scan(rt: RuntimeDep) -> dict[str, Any]:
    return adapter_svc.scan(rt).to_dict()


@router.post(
    "/register",
    response_model=S.AdapterRecord,
    status_code=201,
    summary="Register one adapter folder",
)
def register(body: RegisterBody, rt: RuntimeDep) -> dict[str, Any]:
    rec = adapter_svc.register(
        rt, body.path, name=body.name, description=body.description, tags=body.tags
    )
    return rec.to_dict()


@router.post(
    "/merge",
    response_model=S.Workflow,
    response_model_exclude_unset=True,
    responses=STARTED,
    summary="Merge adapters (a background workflow)",
)
def merge(body: MergeBody, rt: RuntimeDep, response: Response) -> dict[str, Any]:
    spec = body.spec()
    wait = spec.pop("wait", False)
    return _submit(rt, "merge", spec, wait, response)


# --- workflows -------------------------------------------------------------------------------
@router.post(
    "/workflows",
    response_model=S.Workflow,
    response_model_exclude_unset=True,
    responses=STARTED,
    summary="Run merge -> validate -> deploy as one workflow",
)
def create_workflow(body: WorkflowBody, rt: RuntimeDep, response: Response) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if body.merge is not None:
        spec["merge"] = body.merge.spec()
    if body.adapter is not None:
        spec["adapter"] = body.adapter
    if body.validate_ is not None:
        spec["validate"] = body.validate_.model_dump(exclude_none=True)
    if body.deploy is not None:
        spec["deploy"] = body.deploy.model_dump(exclude_none=True)
    return _submit(rt, "workflow", spec, body.wait, response)


@router.get(
    "/workflows",
    response_model=S.WorkflowList,
    response_model_exclude_unset=True,
    summary="List workflows, newest first",
)
def list_workflows(rt: RuntimeDep, status: str | None = None) -> dict[str, Any]:
    items = workflows.list_workflows(rt, status=status)
    return {"workflows": items, "count": len(items)}


@router.get(
    "/workflows/{workflow_id}",
    response_model=S.Workflow,
    response_model_exclude_unset=True,
    summary="One workflow with its steps",
)
def get_workflow(workflow_id: str, rt: RuntimeDep) -> dict[str, Any]:
    return workflows.get_workflow(rt, workflow_id)


@router.post(
    "/workflows/{workflow_id}/cancel",
    response_model=S.Workflow,
    response_model_exclude_unset=True,
    summary="Cancel a workflow between steps",
)
def cancel_workflow(workflow_id: str, rt: RuntimeDep) -> dict[str, Any]:
    return workflows.cancel(rt, workflow_id)


# --- deployments -----------------------------------------------------------------------------
@router.post(
    "/deploy",
    response_model=S.Deployment,
    response_model_exclude_unset=True,
    summary="Deploy an adapter behind a target name with a strategy",
)
def deploy(body: DeployBody, rt: RuntimeDep) -> dict[str, Any]:
    return deployments.deploy(
        rt,
        body.target,
        body.adapter,
        body.strategy,
        percent=body.percent,
        schedule=body.schedule,
        step_requests=body.step_requests,
        split=body.split,
        force=body.force,
        settings=body.settings(),
        engine=body.engine,
    )


@router.get(
    "/deployments",
    response_model=S.DeploymentList,
    response_model_exclude_unset=True,
    summary="Every deployment target and its variants",
)
def list_deployments(rt: RuntimeDep) -> dict[str, Any]:
    items = deployments.list_deployments(rt)
    return {"deployments": items, "count": len(items)}


@router.get(
    "/deployments/{target}",
    response_model=S.Deployment,
    response_model_exclude_unset=True,
    summary="A target's variants and live per-variant numbers",
)
def get_deployment(target: str, rt: RuntimeDep) -> dict[str, Any]:
    return deployments.get_deployment(rt, target)


@router.get(
    "/deployments/{target}/history",
    response_model=S.DeploymentHistory,
    summary="Deploys, steps and rollbacks of a target",
)
def deployment_history(target: str, rt: RuntimeDep) -> dict[str, Any]:
    items = deployments.history(rt, target)
    return {"events": items, "count": len(items)}


@router.post(
    "/deployments/{target}/rollback",
    response_model=S.Deployment,
    response_model_exclude_unset=True,
    summary="Restore what the last change replaced",
)
def rollback(target: str, rt: RuntimeDep) -> dict[str, Any]:
    return deployments.rollback(rt, target)


@router.post(
    "/deployments/{target}/promote",
    response_model=S.Deployment,
    response_model_exclude_unset=True,
    summary="Give one variant all traffic",
)
def promote(target: str, body: PromoteBody, rt: RuntimeDep) -> dict[str, Any]:
    return deployments.promote(rt, target, body.variant)


@router.delete(
    "/deployments/{target}",
    response_model=S.RemovedDeployment,
    summary="Remove a deployment target",
)
def remove_deployment(target: str, rt: RuntimeDep) -> dict[str, Any]:
    return deployments.remove(rt, target)


# --- one adapter (declared last: its path captures any name) ---------------------------------
@router.get(
    "/{ref}",
    response_model=S.AdapterDetail,
    summary="One adapter: record, compatibility, latest validation",
)
def get_adapter(ref: str, rt: RuntimeDep) -> dict[str, Any]:
    rec = adapter_svc.get_adapter(rt, ref)
    latest = adapter_svc.latest_validation(rt, rec)
    return {
        **rec.to_dict(),
        "compatibility": adapter_svc.compatibility(rt, rec.id),
        "latest_validation": latest,
    }


@router.patch(
    "/{ref}", response_model=S.AdapterRecord, summary="Change an adapter's description or tags"
)
def update_adapter(ref: str, body: UpdateBody, rt: RuntimeDep) -> dict[str, Any]:
    return (
        adapter_svc.registry(rt).update(ref, description=body.description, tags=body.tags).to_dict()
    )


@router.delete(
    "/{ref}", response_model=S.RemovedAdapter, summary="Forget an adapter (its files stay on disk)"
)
def remove_adapter(ref: str, rt: RuntimeDep) -> dict[str, Any]:
    rec = adapter_svc.get_adapter(rt, ref)
    target = attach.in_use(rt, rec.ref)
    if target is not None:
        raise Conflict(
            f"adapter {rec.ref} is used by deployment {target!r} (serving, standby or "
            "rollback); remove or redeploy that first"
        )
    return {"removed": adapter_svc.registry(rt).remove(rec.id).to_dict()}


@router.post(
    "/{ref}/validate",
    response_model=S.Workflow,
    response_model_exclude_unset=True,
    responses=STARTED,
    summary="Validate an adapter (a background workflow)",
)
def validate(ref: str, body: ValidateBody, rt: RuntimeDep, response: Response) -> dict[str, Any]:
    spec = {"adapter": ref, **body.model_dump(exclude_none=True, exclude={"wait"})}
    return _submit(rt, "validate", spec, body.wait, response)


@router.get(
    "/{ref}/validations",
    response_model=S.ValidationList,
    summary="Stored validation reports of an adapter",
)
def list_validations(ref: str, rt: RuntimeDep) -> dict[str, Any]:
    rec = adapter_svc.get_adapter(rt, ref)
    items = adapter_svc.validations(rt, rec.id)
    return {"validations": items, "count": len(items)}


@router.post(
    "/{ref}/export",
    response_model=S.Workflow,
    response_model_exclude_unset=True,
    responses=STARTED,
    summary="Export: merged model, llama.cpp GGUF, or into Ollama",
)
def export(ref: str, body: ExportBody, rt: RuntimeDep, response: Response) -> dict[str, Any]:
    spec = {"adapter": ref, **body.model_dump(exclude_none=True, exclude={"wait"})}
    return _submit(rt, "export", spec, body.wait, response)

"""Adapter registry, workflows (merge, validate, export, integrate) and deployments."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class AdapterRecord(BaseModel):
    """A registered adapter; the seed's field names (adapter_id, ...) are given too."""

    id: str
    name: str
    version: int
    type: str
    base_model: str
    path: str
    description: str
    dataset: str | None
    metrics: dict[str, Any] = Field(description="Whatever metrics its producer recorded.")
    file_size_mb: float
    checksum_sha256: str
    tags: list[str]
    rank: int
    alpha: float
    target_modules: list[str]
    source: str = Field(description="scan, training, merge or registered.")
    status: str
    created_at: str
    updated_at: str
    adapter_id: str = Field(description="= id")
    adapter_path: str = Field(description="= path")
    trained_on_dataset: str | None = Field(description="= dataset")
    performance_metrics: dict[str, Any] = Field(description="= metrics")
    engine_max_lora_rank: int = Field(description="The vLLM max_lora_rank that holds its rank.")


class AdapterList(BaseModel):
    adapters: list[AdapterRecord]
    count: int


class ScanReport(BaseModel):
    added: list[AdapterRecord]
    changed: list[AdapterRecord] = Field(description="Files changed since registration.")
    missing: list[AdapterRecord] = Field(description="Folders that are gone.")
    unchanged: int
    skipped: dict[str, str] = Field(description="Folder -> why it was not registered.")


class Compatibility(BaseModel):
    adapter: str
    compatible: bool
    reason: str | None


class ValidationRecord(BaseModel):
    id: str
    adapter_id: str | None
    checksum_sha256: str | None
    mode: str
    score: float
    grade: str
    report: dict[str, Any] = Field(description="The full validation report.")
    created_at: str | None


class ValidationList(BaseModel):
    validations: list[ValidationRecord]
    count: int


class AdapterDetail(AdapterRecord):
    compatibility: Compatibility
    latest_validation: ValidationRecord | None


class RemovedAdapter(BaseModel):
    removed: AdapterRecord


class WorkflowStep(BaseModel):
    step: str = Field(description="merge, validate, deploy, export, ...")
    status: str
    started_at: str | None = None
    message: str | None = None
    progress: float | None = None
    finished_at: str | None = None
    detail: dict[str, Any] | None = Field(None, description="What the step produced.")
    error: str | None = None


class Workflow(BaseModel):
    id: str
    kind: str
    status: str = Field(description="pending, running, completed, failed or cancelled.")
    spec: dict[str, Any] = Field(description="The checked request the workflow runs.")
    steps: list[WorkflowStep]
    result: dict[str, Any] | None = Field(description="What the finished steps produced.")
    error: str | None
    cancel_requested: bool
    owner: str | None = Field(description="host:pid of the process running it.")
    created_at: str | None
    updated_at: str | None
    workflow_id: str = Field(description="= id")
    success: bool = Field(description="status is completed.")


class WorkflowList(BaseModel):
    workflows: list[Workflow]
    count: int


class Variant(BaseModel):
    name: str = Field(description="stable, canary, blue, green, A, B")
    adapter: str
    weight: float = Field(description="Traffic share in percent.")


class DeploymentState(BaseModel):
    """What a target routes to; each strategy adds its own fields (schedule, standby, ...)."""

    model_config = ConfigDict(extra="allow")

    strategy: str | None = None
    variants: list[Variant] = Field(default_factory=list)


class VariantLive(BaseModel):
    requests: int
    errors: int
    error_rate: float
    latency_p50_s: float | None
    latency_p95_s: float | None


class DeployStep(BaseModel):
    """One check or action of a deploy; each step adds its own fields."""

    model_config = ConfigDict(extra="allow")

    step: str = Field(description="environment_check, quality_gate, load, health_check, ...")
    ok: bool


class DeploymentSummary(BaseModel):
    target: str
    strategy: str
    state: DeploymentState
    previous: DeploymentState | None = Field(description="What a rollback restores.")
    version: int
    updated_at: str | None


class Deployment(DeploymentSummary):
    live: dict[str, VariantLive] = Field(description="Per variant, this process's numbers.")
    steps: list[DeployStep] | None = Field(None, description="Only in the answer to a deploy.")


class DeploymentList(BaseModel):
    deployments: list[DeploymentSummary]
    count: int


class DeploymentEvent(BaseModel):
    id: int
    target: str
    action: str
    status: str
    detail: dict[str, Any]
    created_at: str | None


class DeploymentHistory(BaseModel):
    events: list[DeploymentEvent]
    count: int


class RemovedDeployment(BaseModel):
    target: str
    removed: bool

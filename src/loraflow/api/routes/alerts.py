"""Alerts on deployment targets and the instance: active and recent, and their rules."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from loraflow.api.deps import RuntimeDep
from loraflow.api.json_body import json_router
from loraflow.services.ops import alert_rules, alerts

router = json_router(prefix="/api/alerts", tags=["alerts"])


class Alert(BaseModel):
    id: int
    rule: str = Field(description="latency_p95, error_rate, throughput, cpu, memory, gpu_*")
    target: str = Field(description="Deployment target, or '*' for the instance's resources.")
    variant: str | None = Field(None, description="Variant (stable, canary, a, b); None: all.")
    state: Literal["pending", "firing", "resolved"]
    value: float | None = Field(
        None, description="The value that crossed the threshold (when it fired)."
    )
    last_value: float | None = Field(None, description="The value at the latest evaluation.")
    threshold: float
    unit: str
    comparison: Literal["above", "below"]
    window_s: float | None = None
    for_s: float | None = None
    started_at: str | None = Field(None, description="When the threshold was first crossed.")
    fired_at: str | None = None
    ended_at: str | None = Field(None, description="When it resolved.")
    message: str


class AlertList(BaseModel):
    active: list[Alert] = Field(description="Pending and firing alerts, oldest first.")
    recent: list[Alert] = Field(description="Resolved alerts, newest first.")


class RuleConfig(BaseModel):
    threshold: float = Field(description="0 turns the rule off.")
    window: float = Field(description="Seconds of recent numbers the rule looks at.")
    for_: float = Field(alias="for", description="Seconds crossed before the alert fires.")
    enabled: bool
    unit: str
    scope: Literal["variant", "target", "instance"]
    comparison: Literal["above", "below"]
    measures: str


class RuleOverride(BaseModel):
    threshold: float | None = Field(None, ge=0)
    window: float | None = Field(None, gt=0)
    for_: float | None = Field(None, alias="for", ge=0)


class RulesView(BaseModel):
    target: str
    overrides: dict[str, dict[str, float]]
    rules: dict[str, RuleConfig]


class RulesUpdate(BaseModel):
    rules: dict[str, RuleOverride] = Field(
        description="Per rule, the fields to change, e.g. {'latency_p95': {'threshold': 300}}."
    )
    replace: bool = Field(False, description="true: drop this target's other overrides.")


@router.get("", response_model=AlertList, summary="Active alerts and recently resolved ones")
def list_alerts(rt: RuntimeDep, limit: int = 50) -> AlertList:
    return AlertList.model_validate(alerts.list_alerts(rt.db, max(1, min(limit, 1000))))


@router.get(
    "/rules/{target}",
    response_model=RulesView,
    response_model_by_alias=True,
    summary="Alert rules in force for a deployment target ('*': defaults and resources)",
)
def get_rules(target: str, rt: RuntimeDep) -> RulesView:
    return RulesView.model_validate(alert_rules.view(rt.settings, rt.db, target))


@router.put(
    "/rules/{target}",
    response_model=RulesView,
    response_model_by_alias=True,
    summary="Override alert thresholds, windows and durations of a target ('*': all)",
)
def put_rules(target: str, body: RulesUpdate, rt: RuntimeDep) -> RulesView:
    raw = {n: o.model_dump(by_alias=True, exclude_none=True) for n, o in body.rules.items()}
    view = alert_rules.update(rt.settings, rt.db, target, raw, replace=body.replace)
    return RulesView.model_validate(view)


@router.delete(
    "/rules/{target}",
    response_model=RulesView,
    response_model_by_alias=True,
    summary="Drop a target's overrides: the defaults apply again",
)
def delete_rules(target: str, rt: RuntimeDep) -> RulesView:
    view = alert_rules.reset(rt.settings, rt.db, target)
    return RulesView.model_validate(view)

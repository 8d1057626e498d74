"""Per-deployment settings: stored with the state, used by the live judgement and A/B end."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from loraflow import db
from loraflow.adapters import deploy as strategies
from loraflow.errors import Conflict, InvalidInput
from loraflow.services.manage import deployments
from loraflow.services.registry import attach
from loraflow.services.runtime import Runtime


def test_settings_default_to_the_global_ones_and_are_checked(base_rt: Runtime) -> None:
    s = base_rt.settings
    chosen = strategies.deploy_settings(s, {"max_error_rate": 0.05, "switch_delay": 2})
    assert chosen["max_error_rate"] == 0.05 and chosen["switch_delay"] == 2.0
    assert chosen["health_retries"] == s.deploy_health_retries
    assert chosen["max_latency_ratio"] == s.deploy_max_latency_ratio
    with pytest.raises(InvalidInput, match="max_error_rate=2 must be at least 0"):
        strategies.deploy_settings(s, {"max_error_rate": 2})
    with pytest.raises(InvalidInput, match="max_latency_ratio.*above 1"):
        strategies.deploy_settings(s, {"max_latency_ratio": 1.0})
    with pytest.raises(InvalidInput, match="unknown deployment setting"):
        strategies.deploy_settings(s, {"retries": 3})


def _put(rt: Runtime, target: str, state: dict[str, Any]) -> None:
    with rt.db.begin() as conn:
        conn.execute(db.deployments.delete().where(db.deployments.c.target == target))
        conn.execute(
            db.deployments.insert().values(
                target=target,
                strategy=state["strategy"],
                state=state,
                previous=None,
                version=1,
                updated_at=datetime.now(UTC),
            )
        )


def _canary(settings: dict[str, Any] | None) -> dict[str, Any]:
    state = {
        "strategy": "canary",
        "variants": [
            {"name": "stable", "adapter": "a@v1", "weight": 90.0},
            {"name": "canary", "adapter": "a@v2", "weight": 10.0},
        ],
        "schedule": [10.0, 100.0],
        "step": 0,
        "step_requests": 50,
    }
    return state | ({"settings": settings} if settings else {})


def test_a_deployment_is_rolled_back_by_its_own_error_rate(base_rt: Runtime) -> None:
    own = strategies.deploy_settings(base_rt.settings, {"max_error_rate": 0.4, "min_requests": 3})
    _put(base_rt, "own-limits", _canary(own))
    routed = deployments.Routed("own-limits", 1, "canary", "a")
    for ok in (True, False, False):
        deployments.record(base_rt, routed, ok, 0.01)
    now = deployments.get_deployment(base_rt, "own-limits")
    assert [v["adapter"] for v in now["state"]["variants"]] == ["a@v1"]
    assert now["state"]["settings"] == own  # kept with the restored state
    assert deployments.history(base_rt, "own-limits", 1)[0]["status"] == "auto"

    # The step's numbers name both variants, the stable one with none of its requests yet.
    live = deployments.history(base_rt, "own-limits", 1)[0]["detail"]["live"]
    assert live["canary"]["requests"] == 3 and live["canary"]["errors"] == 2
    assert live["stable"] == {
        "requests": 0,
        "errors": 0,
        "error_rate": 0.0,
        "latency_p50_s": None,
        "latency_p95_s": None,
    }

    # The same traffic under the global settings (20 requests first) changes nothing.
    _put(base_rt, "global-limits", _canary(None))
    routed = deployments.Routed("global-limits", 1, "canary", "a")
    assert deployments.get_deployment(base_rt, "global-limits")["live"]["stable"]["requests"] == 0
    for ok in (True, False, False):
        deployments.record(base_rt, routed, ok, 0.01)
    assert deployments.get_deployment(base_rt, "global-limits")["state"]["strategy"] == "canary"


def _ab(ends: datetime, min_requests: int = 2) -> dict[str, Any]:
    return {
        "strategy": "ab",
        "variants": [
            {"name": "A", "adapter": "a@v1", "weight": 50.0},
            {"name": "B", "adapter": "a@v2", "weight": 50.0},
        ],
        "success_metrics": list(strategies.AB_SUCCESS_METRICS),
        "ab_ends_at": ends.isoformat(),
        "settings": strategies.deploy_settings(
            _Defaults(), {"min_requests": min_requests, "ab_duration": 60}
        ),
    }


class _Defaults:
    deploy_max_error_rate = 0.9
    deploy_max_latency_ratio = 1e9
    deploy_min_requests = 20
    deploy_health_retries = 3
    deploy_health_timeout = 60.0
    deploy_switch_delay = 0.0
    deploy_ab_duration = 0.0


def test_an_ab_test_ends_after_its_duration_with_the_better_variant(base_rt: Runtime) -> None:
    future = datetime.now(UTC) + timedelta(hours=1)
    _put(base_rt, "ab-running", _ab(future))
    routed = {n: deployments.Routed("ab-running", 1, n, "a") for n in ("A", "B")}
    for name, ok in (("A", False), ("A", True), ("B", True), ("B", True)):
        deployments.record(base_rt, routed[name], ok, 0.01)
    assert deployments.get_deployment(base_rt, "ab-running")["state"]["strategy"] == "ab"

    # The duration ends (same version, same live numbers); the next request concludes it.
    over = _ab(datetime.now(UTC) - timedelta(seconds=1))
    with base_rt.db.begin() as conn:
        t = db.deployments
        conn.execute(t.update().where(t.c.target == "ab-running").values(state=over))
    deployments.record(base_rt, routed["B"], True, 0.01)
    now = deployments.get_deployment(base_rt, "ab-running")["state"]
    assert [v["adapter"] for v in now["variants"]] == ["a@v2"]
    assert now["ab_result"]["winner"] == "B"
    assert now["ab_result"]["success_metrics"] == ["error_rate", "latency_p95_s"]
    assert deployments.history(base_rt, "ab-running", 1)[0]["action"] == "ab_concluded"


def test_an_ab_test_b_did_not_win_keeps_a() -> None:
    stats = {"A": strategies.VariantStats(), "B": strategies.VariantStats()}
    for _ in range(3):
        stats["A"].add(True, 0.1)
        stats["B"].add(False, 0.1)
    state = _ab(datetime.now(UTC))
    verdict = strategies.ab_verdict(state, stats, max_latency_ratio=1.2, min_requests=2)
    assert verdict["winner"] == "A" and "error rate" in verdict["reason"]
    too_few = strategies.ab_verdict(state, stats, max_latency_ratio=1.2, min_requests=10)
    assert too_few["winner"] == "A" and "served 3 of the 10" in too_few["reason"]


def test_in_use_names_the_deployment_that_serves_an_adapter(base_rt: Runtime) -> None:
    # What DELETE /api/adapters/{ref} asks before it forgets an adapter.
    state = _canary(None)
    state["variants"][1]["adapter"] = "only-here@v3"
    _put(base_rt, "uses-only-here", state)
    assert attach.in_use(base_rt, "only-here@v3") == "uses-only-here"
    assert attach.in_use(base_rt, "never-deployed@v1") is None


@pytest.mark.parametrize("meanwhile", ["step", "last step", "rollback"])
def test_promote_made_while_a_request_changes_the_deployment(
    base_rt: Runtime, monkeypatch: pytest.MonkeyPatch, meanwhile: str
) -> None:
    """A canary's automatic step lands between promote's read and its write: promote makes
    its change again on what the step left, unless the variant it picked is gone."""
    state = _canary(None) | {"schedule": [10.0, 50.0, 100.0]}
    _put(base_rt, "race", state)
    changed = {
        "step": strategies.advance_canary(state),
        "last step": strategies.advance_canary(strategies.advance_canary(state)),
        "rollback": {"strategy": "replace", "variants": [state["variants"][0]]},
    }[meanwhile]
    swap = deployments._swap
    raced: list[int] = []

    def racing(rt: Runtime, target: str, version: int | None, *rest: Any) -> int:
        if not raced:  # the request's write lands first
            raced.append(swap(rt, target, version, changed, None))
        return swap(rt, target, version, *rest)

    monkeypatch.setattr(deployments, "_swap", racing)
    if meanwhile == "rollback":
        with pytest.raises(Conflict, match="changed while this change was made"):
            deployments.promote(base_rt, "race")
        now = deployments.get_deployment(base_rt, "race")
        assert now["state"]["variants"] == [state["variants"][0]]  # the rollback stands
        return
    promoted = deployments.promote(base_rt, "race")
    assert raced and promoted["state"]["variants"] == [
        {"name": "stable", "adapter": "a@v2", "weight": 100.0}
    ]
    assert deployments.history(base_rt, "race", 1)[0]["action"] == "promote"

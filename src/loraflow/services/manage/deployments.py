"""Deployments in the running service: deploy, route, health-check, roll back, promote.

The state of every target lives in the database, so all server workers route the same way;
each worker attaches the adapters it is asked for on first use (checksum verified). A
deploy changes the state only after the new adapter passed its checks, in one update, so
a failed deploy leaves the previous deployment serving untouched.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from loraflow import db
from loraflow.adapters import deploy as strategies
from loraflow.engines.base import GenerationParams
from loraflow.errors import Conflict, EngineUnavailable, InvalidInput, LoraflowError, NotFound
from loraflow.services.manage import fleet
from loraflow.services.registry import adapters as adapter_svc
from loraflow.services.registry import attach
from loraflow.services.runtime import Runtime, local_engine

log = logging.getLogger(__name__)
_TARGET = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,63}$")
HEALTH_PROMPT = "Hello! Please answer briefly: what is 2 + 2?"


@dataclass(frozen=True)
class Routed:
    """Where one request to a deployment target went."""

    target: str
    version: int
    variant: str
    adapter: str  # the engine's name for the adapter
    remote: bool = False  # served by the remote fleet, not the local engine


def _now() -> datetime:
    return datetime.now(UTC)


def check_target(rt: Runtime, target: str) -> str:
    if not isinstance(target, str) or not _TARGET.match(target):
        raise InvalidInput(
            f"deployment target {target!r} must be 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter"
        )
    taken = {rt.settings.base_model_name, "base"}
    if rt.local is not None:
        taken.update(rt.local.adapters())
    taken.update(r.name for r in adapter_svc.list_adapters(rt))
    if target in taken:
        raise InvalidInput(
            f"deployment target {target!r} is already the name of a model or adapter; "
            "pick a name clients will call, e.g. 'production'"
        )
    return target


# --- reading ---------------------------------------------------------------------------------
def _row(rt: Runtime, target: str) -> dict[str, Any] | None:
    with rt.db.connect() as conn:
        row = conn.execute(select(db.deployments).where(db.deployments.c.target == target)).first()
    return dict(row._mapping) if row is not None else None


def get_deployment(rt: Runtime, target: str) -> dict[str, Any]:
    row = _row(rt, target)
    if row is None:
        names = [d["target"] for d in list_deployments(rt)]
        raise NotFound(
            f"no deployment named {target!r}; deployments: "
            + (", ".join(repr(n) for n in names) or "none")
        )
    row["live"] = _live(row["state"], rt.traffic.get(target, row["version"]))
    row["updated_at"] = row["updated_at"].isoformat() if row["updated_at"] else None
    return row


def list_deployments(rt: Runtime) -> list[dict[str, Any]]:
    with rt.db.connect() as conn:
        rows = conn.execute(select(db.deployments).order_by(db.deployments.c.target)).all()
    out = []
    for r in rows:
        d = dict(r._mapping)
        d["updated_at"] = d["updated_at"].isoformat() if d["updated_at"] else None
        out.append(d)
    return out


def history(rt: Runtime, target: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    t = db.deployment_events
    q = select(t).order_by(t.c.id.desc()).limit(limit)
    if target is not None:
        q = q.where(t.c.target == target)
    with rt.db.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(q)]
    for r in rows:
        r["created_at"] = r["created_at"].isoformat() if r["created_at"] else None
    return rows


def _event(rt: Runtime, target: str, action: str, status: str, detail: dict[str, Any]) -> None:
    with rt.db.begin() as conn:
        conn.execute(
            db.deployment_events.insert().values(
                target=target, action=action, status=status, detail=detail, created_at=_now()
            )
        )


def _swap(
    rt: Runtime,
    target: str,
    expected_version: int | None,
    state: dict[str, Any],
    previous: dict[str, Any] | None,
) -> int:
    """Write the new state if nobody changed the target meanwhile; the new version."""
    t = db.deployments
    with rt.db.begin() as conn:
        if expected_version is None:
            try:
                conn.execute(
                    t.insert().values(
                        target=target,
                        strategy=state["strategy"],
                        state=state,
                        previous=previous,
                        version=1,
                        updated_at=_now(),
                    )
                )
            except Exception as exc:
                raise Conflict(f"deployment {target!r} was created meanwhile; retry") from exc
            return 1
        done = conn.execute(
            t.update()
            .where(t.c.target == target, t.c.version == expected_version)
            .values(
                strategy=state["strategy"],
                state=state,
                previous=previous,
                version=expected_version + 1,
                updated_at=_now(),
            )
        ).rowcount
    if not done:
        raise Conflict(f"deployment {target!r} changed while this change was made; retry")
    return expected_version + 1


# --- checks ----------------------------------------------------------------------------------
def health_check(
    rt: Runtime, adapter: str, retries: int | None = None, timeout: float | None = None
) -> dict[str, Any]:
    """Generate with the adapter (retries, timeout each) and check its logits are finite."""
    s = rt.settings
    retries = s.deploy_health_retries if retries is None else int(retries)
    timeout = s.deploy_health_timeout if timeout is None else float(timeout)
    engine = local_engine(rt)
    attempts: list[dict[str, Any]] = []
    for attempt in range(1, retries + 1):
        started = time.perf_counter()
        outcome: dict[str, Any] = {}

        def run(outcome: dict[str, Any] = outcome) -> None:
            try:
                if not engine.logits_finite(HEALTH_PROMPT, adapter):
                    outcome["error"] = "the adapter's logits are NaN or infinite"
                    return
                params = GenerationParams(max_new_tokens=4, temperature=0.0, ignore_eos=True)
                result = engine.generate_text(HEALTH_PROMPT, params, adapter=adapter)
                outcome["tokens"] = result.completion_tokens
            except Exception as exc:  # any failure of the adapter is a failed check
                outcome["error"] = str(exc) or type(exc).__name__

        worker = threading.Thread(target=run, daemon=True, name=f"health-{adapter}")
        worker.start()
        worker.join(timeout)
        seconds = round(time.perf_counter() - started, 3)
        if worker.is_alive():
            outcome = {"error": f"no answer within {timeout:g}s"}
        ok = "error" not in outcome and outcome.get("tokens", 0) > 0
        if "error" not in outcome and not ok:
            outcome["error"] = "generated no tokens"
        attempts.append({"attempt": attempt, "ok": ok, "seconds": seconds, **outcome})
        if ok:
            break
        # A non-finite adapter will not recover on a retry.
        if "NaN" in str(outcome.get("error")):
            break
    return {"ok": attempts[-1]["ok"], "attempts": attempts}


def gate(rt: Runtime, rec: adapter_svc.AdapterRecord, force: bool) -> dict[str, Any]:
    """The quality gate: the adapter's newest validation must pass, unless forced."""
    found = adapter_svc.latest_validation(rt, rec)
    if found is None:
        decision = {
            "passed": False,
            "reasons": [f"adapter {rec.ref} has no validation report for its current files"],
        }
    else:
        decision = adapter_svc.gate_decision(rt.settings, found["report"])
        decision["validation_id"] = found["id"]
        decision["score"] = found["score"]
        decision["grade"] = found["grade"]
    decision["forced"] = bool(force and not decision["passed"])
    if not decision["passed"] and not force:
        raise InvalidInput(
            f"adapter {rec.ref} does not pass the quality gate: " + "; ".join(decision["reasons"]),
            hint="validate it (loraflow adapters validate) or deploy with force",
        )
    return decision


# --- deploy / rollback / promote -------------------------------------------------------------
def deploy(
    rt: Runtime,
    target: str,
    adapter: str,
    strategy: str = "replace",
    *,
    percent: float | None = None,
    schedule: list[float] | None = None,
    step_requests: int | None = None,
    split: list[float] | None = None,
    force: bool = False,
    settings: dict[str, Any] | None = None,
    engine: str | None = None,
) -> dict[str, Any]:
    """Put a registered adapter behind `target` with a strategy, after checks and gate.

    `settings` are this deployment's thresholds, health check, switch delay and A/B
    duration (see `strategies.SETTINGS`); unset ones take the global DEPLOY_* values.
    `engine` remote serves it from the vLLM replicas (loaded there at run time) instead of
    the local engine.
    """
    strategy = strategies.check_strategy(strategy)
    engine = fleet.check_engine(engine)
    if engine == "remote":
        fleet.fleet(rt)  # refused before anything is checked or written
    chosen = strategies.deploy_settings(rt.settings, settings)
    current = _row(rt, target)
    if current is None:
        check_target(rt, target)
    steps: list[dict[str, Any]] = []
    rec = None
    try:
        rec = adapter_svc.registry(rt).verify(adapter)
        if engine == "remote":
            fleet.check_limits(rt, rec)  # the replicas' limits, not the local base model's
        else:
            compat = adapter_svc.compatibility(rt, rec.id)
            if not compat["compatible"]:
                raise InvalidInput(compat["reason"])
        steps.append(
            {"step": "environment_check", "ok": True, "adapter": rec.ref, "engine": engine}
        )
        steps.append({"step": "quality_gate", "ok": True, **gate(rt, rec, force)})
        state = strategies.new_state(
            strategy,
            current["state"] if current else None,
            rec.ref,
            percent=percent,
            schedule=schedule,
            step_requests=step_requests or chosen["min_requests"],
            split=split,
        )
        state["settings"] = chosen
        if engine == "remote":
            state["engine"] = "remote"
        if strategy == "ab" and chosen["ab_duration"] > 0:
            ends = _now().timestamp() + chosen["ab_duration"]
            state["ab_ends_at"] = datetime.fromtimestamp(ends, UTC).isoformat()
        if engine == "remote":
            served, health, undo = _load_remote(rt, rec, state, chosen)
        else:
            served, health, undo = _load_local(rt, rec, chosen)
        steps.append({"step": "load", "ok": True, "engine_name": served, "engine": engine})
        steps.append({"step": "health_check", **health})
        if not health["ok"]:
            undo()
            last = health.get("error") or health["attempts"][-1].get("error", "failed")
            raise InvalidInput(
                f"adapter {rec.ref} failed its health check "
                f"({len(health['attempts'])} attempt(s)): {last}; "
                + ("the previous deployment keeps serving" if current else "nothing was deployed")
            )
        if strategy == "blue_green" and chosen["switch_delay"] > 0:
            # The new colour is loaded and healthy; traffic moves once the delay has passed.
            time.sleep(chosen["switch_delay"])
            steps.append({"step": "switch_delay", "ok": True, "seconds": chosen["switch_delay"]})
        version = _swap(
            rt,
            target,
            current["version"] if current else None,
            state,
            current["state"] if current else None,
        )
        steps.append({"step": "switch", "ok": True, "version": version})
        if current is not None:
            _retire(rt, current["state"])
        steps.append(
            {
                "step": "rollback_plan",
                "ok": True,
                "restores": current["state"] if current else None,
            }
        )
    except LoraflowError as exc:
        _event(
            rt,
            target,
            "deploy",
            "failed",
            {"adapter": adapter, "strategy": strategy, "error": str(exc), "steps": steps},
        )
        raise
    _event(
        rt,
        target,
        "deploy",
        "ok",
        {"adapter": rec.ref, "strategy": strategy, "state": state, "steps": steps},
    )
    return {**get_deployment(rt, target), "steps": steps}


def _load_local(
    rt: Runtime, rec: adapter_svc.AdapterRecord, chosen: dict[str, Any]
) -> tuple[str, dict[str, Any], Any]:
    """Attach the adapter to the local engine and check it; (name, health, undo)."""
    loaded_before = set(rt.local.adapters()) if rt.local is not None else set()
    served = attach.ensure_served(rt, rec.id)
    health = health_check(rt, served, chosen["health_retries"], chosen["health_timeout"])

    def undo() -> None:
        if served not in loaded_before and not attach.in_use(rt, rec.ref):
            local_engine(rt).unload_adapter(served)

    return served, health, undo


def _load_remote(
    rt: Runtime, rec: adapter_svc.AdapterRecord, state: dict[str, Any], chosen: dict[str, Any]
) -> tuple[str, dict[str, Any], Any]:
    """Load every adapter of the new state on every replica and check the new one through
    each replica; (name, health, undo)."""
    before = set(fleet.fleet(rt).wanted())
    fleet.ensure_loaded(rt, _refs(state))
    served = fleet.served_name(rec.ref)
    health = fleet.health_check(rt, served, chosen["health_retries"], chosen["health_timeout"])

    def undo() -> None:
        fresh = {r for r in _refs(state) if fleet.served_name(r) not in before}
        fleet.unload_if_unused(rt, fresh, remove_files=True)

    return served, health, undo


def _refs(state: dict[str, Any] | None) -> set[str]:
    """The adapter refs a state serves or keeps on standby."""
    if not state:
        return set()
    refs = {v["adapter"] for v in state.get("variants", [])}
    if state.get("standby"):
        refs.add(state["standby"]["adapter"])
    return refs


def _retire(rt: Runtime, replaced: dict[str, Any] | None, *, wait: bool = True) -> None:
    """Unload from the replicas what a change left no remote deployment using, once the
    requests in flight on it have ended. With `wait` False (a change a request made: an
    automatic rollback or canary step) that happens in the background, not on its time."""
    if not replaced or replaced.get("engine") != "remote":
        return

    def unload() -> None:
        try:
            fleet.unload_if_unused(rt, _refs(replaced), drain=True)
        except LoraflowError as exc:  # the change is made; the poll keeps replicas in line
            log.warning("retired adapters not unloaded: %s", exc)

    def unload_in_background() -> None:
        try:
            unload()
        except Exception:  # e.g. the database: nobody waits on this thread to hear of it
            log.exception("retired adapters not unloaded")

    if wait:
        unload()
    else:
        threading.Thread(target=unload_in_background, daemon=True, name="fleet-retire").start()


def rollback(rt: Runtime, target: str, *, reason: str = "manual") -> dict[str, Any]:
    """Restore what the last change replaced; Conflict when there is nothing to restore."""
    row = _row(rt, target)
    if row is None:
        raise NotFound(f"no deployment named {target!r}")
    if not row["previous"]:
        raise Conflict(
            f"deployment {target!r} has nothing to roll back to (no earlier state is kept)"
        )
    if row["previous"].get("engine") == "remote":
        fleet.ensure_loaded(rt, _refs(row["previous"]))  # retired ones are loaded again first
    _swap(rt, target, row["version"], row["previous"], None)
    _retire(rt, row["state"])
    _event(
        rt,
        target,
        "rollback",
        "ok",
        {"reason": reason, "restored": row["previous"], "replaced": row["state"]},
    )
    return get_deployment(rt, target)


# How often promote makes its change again when a request changed the deployment meanwhile.
_PROMOTE_TRIES = 3


def promote(rt: Runtime, target: str, variant: str | None = None) -> dict[str, Any]:
    """Give one variant (default: the canary or B) all traffic now.

    A request may change the deployment at the same moment (a canary's automatic step). The
    promotion is then made again on what that left, as long as the variant picked is still
    there with the same adapter; where that step already gave it all traffic, nothing is left
    to do. Where it is gone (an automatic rollback), the Conflict stands."""
    row = _row(rt, target)
    if row is None:
        raise NotFound(f"no deployment named {target!r}")
    state = row["state"]
    names = [v["name"] for v in state["variants"]]
    pick = variant or (state["variants"][-1]["name"])
    chosen = next((v for v in state["variants"] if v["name"] == pick), None)
    if chosen is None:
        raise NotFound(f"deployment {target!r} has no variant {pick!r}; variants: {names}")
    adapter = chosen["adapter"]
    for attempt in range(_PROMOTE_TRIES):
        new = _keep_settings(
            {
                "strategy": "replace",
                "variants": [{"name": "stable", "adapter": adapter, "weight": 100.0}],
            },
            state,
        )
        try:
            _swap(rt, target, row["version"], new, state)
            break
        except Conflict:
            row = _row(rt, target)
            if row is None or attempt == _PROMOTE_TRIES - 1:
                raise
            variants = row["state"]["variants"]
            if [(v["adapter"], float(v["weight"])) for v in variants] == [(adapter, 100.0)]:
                break  # done by that step; what it left behind is retired below, waiting
            if not any(v["name"] == pick and v["adapter"] == adapter for v in variants):
                raise
            state = row["state"]
    _retire(rt, state)
    _event(rt, target, "promote", "ok", {"variant": pick, "adapter": adapter})
    return get_deployment(rt, target)


def remove(rt: Runtime, target: str) -> dict[str, Any]:
    row = _row(rt, target)
    if row is None:
        raise NotFound(f"no deployment named {target!r}")
    with rt.db.begin() as conn:
        conn.execute(db.deployments.delete().where(db.deployments.c.target == target))
    _retire(rt, row["state"])
    _event(rt, target, "remove", "ok", {"state": row["state"]})
    return {"target": target, "removed": True}


# --- routing ---------------------------------------------------------------------------------
def route(rt: Runtime, name: str) -> Routed | None:
    """The variant a request for `name` goes to, or None when `name` is not a target."""
    row = _row(rt, name)
    if row is None:
        return None
    variant = strategies.pick(row["state"])
    if row["state"].get("engine") == "remote":
        # Loaded on every replica at deploy time; the fleet picks the replica.
        served = fleet.served_name(variant["adapter"])
        return Routed(name, row["version"], variant["name"], served, remote=True)
    try:
        served = attach.ensure_served(rt, variant["adapter"])
    except LoraflowError as exc:
        # A variant that cannot even be attached (files changed or gone) counts as an error.
        failed = Routed(name, row["version"], variant["name"], "")
        record(rt, failed, False, 0.0)
        raise EngineUnavailable(
            f"deployment {name!r} variant {variant['name']} ({variant['adapter']}) cannot "
            f"serve: {exc}"
        ) from exc
    return Routed(name, row["version"], variant["name"], served)


def record(rt: Runtime, routed: Routed, ok: bool, seconds: float) -> None:
    """Count one finished request; roll back or advance the target when its numbers say so."""
    rt.traffic.record(routed.target, routed.version, routed.variant, ok, seconds)
    if rt.monitor is not None:  # shared with every worker through the database, for alerts
        rt.monitor.record(routed.target, routed.variant, ok, seconds)
    row = _row(rt, routed.target)
    if row is None or row["version"] != routed.version:
        return
    stats = rt.traffic.get(routed.target, routed.version)
    limits = settings_of(rt, row["state"])
    reason = strategies.judge(
        row["state"],
        stats,
        max_error_rate=limits["max_error_rate"],
        max_latency_ratio=limits["max_latency_ratio"],
        min_requests=limits["min_requests"],
    )
    try:
        if reason is None and _ab_over(row["state"]):
            _conclude_ab(rt, routed.target, row, stats, limits)
        elif reason is not None:
            stable = row["state"]["variants"][0]
            restored = _keep_settings(
                {
                    "strategy": "replace",
                    "variants": [{"name": "stable", "adapter": stable["adapter"], "weight": 100.0}],
                },
                row["state"],
            )
            # The failed trial is not kept as something to roll back to.
            _swap(rt, routed.target, row["version"], restored, None)
            _retire(rt, row["state"], wait=False)
            _event(
                rt,
                routed.target,
                "rollback",
                "auto",
                {"reason": reason, "replaced": row["state"], "live": _live(row["state"], stats)},
            )
        elif strategies.ready_to_advance(row["state"], stats):
            new = _keep_settings(strategies.advance_canary(row["state"]), row["state"])
            # A rollback after a step still restores what the canary deploy replaced.
            _swap(rt, routed.target, row["version"], new, row["previous"])
            _retire(rt, row["state"], wait=False)  # at 100% the stable version is retired
            _event(
                rt,
                routed.target,
                "canary_step",
                "ok",
                {"state": new, "live": _live(row["state"], stats)},
            )
    except Conflict:
        pass  # another request or worker changed the target first


def _live(state: dict[str, Any], stats: dict[str, strategies.VariantStats]) -> dict[str, Any]:
    """The live numbers of every variant of `state`, zeros for one no request reached yet."""
    names = [v["name"] for v in state.get("variants", [])]
    names += [n for n in stats if n not in names]
    return {n: stats.get(n, strategies.VariantStats()).to_dict() for n in names}


def settings_of(rt: Runtime, state: dict[str, Any]) -> dict[str, Any]:
    """The settings a deployment was made with (older ones: the global settings)."""
    return strategies.deploy_settings(rt.settings, state.get("settings"))


def _keep_settings(new: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
    """`new` with the deployment's settings and engine, which a state change keeps."""
    kept: dict[str, Any] = {k: old[k] for k in ("settings", "engine") if k in old and k not in new}
    return {**new, **kept}


def _ab_over(state: dict[str, Any]) -> bool:
    ends = state.get("ab_ends_at") if state.get("strategy") == "ab" else None
    return bool(ends) and _now() >= datetime.fromisoformat(ends)


def _conclude_ab(
    rt: Runtime, target: str, row: dict[str, Any], stats: dict[str, Any], limits: dict[str, Any]
) -> None:
    """End an A/B test whose duration is over: the winner by the success metrics takes all."""
    verdict = strategies.ab_verdict(
        row["state"],
        stats,
        max_latency_ratio=limits["max_latency_ratio"],
        min_requests=limits["min_requests"],
    )
    won = next(v for v in row["state"]["variants"] if v["name"] == verdict["winner"])
    new = _keep_settings(
        {
            "strategy": "replace",
            "variants": [{"name": "stable", "adapter": won["adapter"], "weight": 100.0}],
            "ab_result": {**verdict, "success_metrics": row["state"].get("success_metrics")},
        },
        row["state"],
    )
    _swap(rt, target, row["version"], new, row["state"])
    _retire(rt, row["state"], wait=False)
    _event(rt, target, "ab_concluded", "ok", {**verdict, "adapter": won["adapter"]})

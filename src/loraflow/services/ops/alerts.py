"""Alerts on the live numbers of every worker: pending -> firing -> resolved, in the database.

Every server worker evaluates the rules on the samples all workers wrote (see
`monitor_samples`). Each change of an alert is one conditional UPDATE (or an INSERT guarded
by the unique `open_key`), so when two workers evaluate at the same moment exactly one of
them makes the change, logs it and sends the notification: one alert, not one per worker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError

from loraflow import db
from loraflow.adapters.deploy import quantile
from loraflow.config import Settings
from loraflow.services.ops import alert_rules, monitor_samples
from loraflow.services.ops.alert_rules import INSTANCE, KINDS
from loraflow.services.ops.alert_webhook import Webhook

log = logging.getLogger("loraflow.alerts")
OPEN = ("pending", "firing")
Notify = Callable[[dict[str, Any]], None]


@dataclass
class Measured:
    """One rule's value for one target (and variant) now; None when there is nothing to judge."""

    rule: str
    target: str
    variant: str
    value: float | None
    config: dict[str, float]
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.rule}|{self.target}|{self.variant}"

    @property
    def crossed(self) -> bool:
        if self.value is None:
            return False
        thr = self.config["threshold"]
        return self.value > thr if KINDS[self.rule].above else self.value < thr


# --- measuring -------------------------------------------------------------------------------
def _request_value(
    rule: str,
    samples: list[monitor_samples.Sample],
    window: float,
    min_requests: int,
    judged_from: float | None,
    now: float,
) -> tuple[float | None, dict[str, Any]]:
    n = len(samples)
    detail: dict[str, Any] = {"requests": n}
    if rule == "throughput":
        # A target deployed less than a window ago has not had the chance to reach the floor.
        if judged_from is None or now - judged_from < window:
            return None, {**detail, "why_none": "deployed less than one window ago"}
        return n * 60.0 / window, detail
    if n < min_requests:
        return None, {**detail, "why_none": f"fewer than {min_requests} requests in the window"}
    errors = sum(1 for s in samples if not s.ok)
    detail["errors"] = errors
    if rule == "error_rate":
        return errors / n, detail
    return 1000.0 * quantile([s.seconds for s in samples], 0.95), detail


def _deployed_since(engine: Engine) -> dict[str, float]:
    """When each target was first deployed since it was last removed (Unix seconds)."""
    t = db.deployment_events
    q = (
        select(t.c.target, t.c.action, t.c.created_at)
        .where(t.c.status == "ok", t.c.action.in_(("deploy", "remove")))
        .order_by(t.c.id)
    )
    since: dict[str, float] = {}
    with engine.connect() as conn:
        for target, action, at in conn.execute(q):
            if action == "remove":
                since.pop(target, None)
            else:
                since.setdefault(target, _aware(at).timestamp())
    return since


def measure(settings: Settings, engine: Engine, now: float) -> list[Measured]:
    """Every enabled rule's value now: per target and variant, and for the instance."""
    every = alert_rules.all_overrides(engine)
    with engine.connect() as conn:
        rows = conn.execute(select(db.deployments.c.target, db.deployments.c.state)).all()
    per_target = {t: alert_rules.effective(settings, every, t) for t, _ in rows}
    instance = alert_rules.effective(settings, every, INSTANCE)
    widest = max(
        [r["window"] for rules in [*per_target.values(), instance] for r in rules.values()]
    )
    samples = monitor_samples.requests_since(engine, now - widest) if rows else []
    since = _deployed_since(engine) if rows else {}
    out: list[Measured] = []
    for target, state in rows:
        rules = per_target[target]
        mine = [s for s in samples if s.target == target]
        variants = [v["name"] for v in (state or {}).get("variants", [])]
        # A one-variant target is the same numbers twice: judged as the target only.
        scopes = [""] + (variants if len(variants) > 1 else [])
        for name, kind in KINDS.items():
            cfg = rules[name]
            if kind.scope == "instance" or cfg["threshold"] <= 0:
                continue
            for variant in scopes if kind.scope == "variant" else [""]:
                cut = now - cfg["window"]
                chosen = [s for s in mine if s.at >= cut and (not variant or s.variant == variant)]
                value, detail = _request_value(
                    name, chosen, cfg["window"], settings.alert_min_requests, since.get(target), now
                )
                out.append(Measured(name, target, variant, value, cfg, detail))
    out += _measure_instance(engine, instance, now)
    return out


def _measure_instance(
    engine: Engine, rules: dict[str, dict[str, float]], now: float
) -> list[Measured]:
    on = {n: c for n, c in rules.items() if KINDS[n].scope == "instance" and c["threshold"] > 0}
    if not on:
        return []
    rows = monitor_samples.resources_since(engine, now - max(c["window"] for c in on.values()))
    out = []
    column = {
        "cpu": "cpu_percent",
        "memory": "memory_percent",
        "gpu_memory": "gpu_memory_percent",
        "gpu_util": "gpu_util_percent",
    }
    for name, cfg in on.items():
        col = column[name]
        per_worker: dict[str, list[float]] = {}
        for r in rows:
            if r["at"] >= now - cfg["window"] and r[col] is not None:
                per_worker.setdefault(r["worker"], []).append(float(r[col]))
        means = [sum(v) / len(v) for v in per_worker.values()]
        value: float | None = None
        if means:
            # Workers share one GPU (its numbers are device-wide); CPU and memory add up.
            value = max(means) if name.startswith("gpu") else sum(means)
        detail = {"workers": len(means)}
        out.append(Measured(name, INSTANCE, "", value, cfg, detail))
    return out


# --- state -----------------------------------------------------------------------------------
def _now_dt(now: float) -> datetime:
    return datetime.fromtimestamp(now, UTC)


def _aware(dt: datetime | None) -> datetime:
    if dt is None:
        return datetime.now(UTC)
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _iso(dt: datetime | None) -> str | None:
    return _aware(dt).isoformat() if dt is not None else None


def describe(row: dict[str, Any]) -> dict[str, Any]:
    """An alert row as the API, CLI, UI and webhook show it."""
    kind = KINDS.get(row["rule"])
    d = row.get("detail") or {}
    unit = kind.unit if kind else ""
    where = row["target"] + (f"/{row['variant']}" if row["variant"] else "")
    side = "above" if kind is None or kind.above else "below"
    value = row["value"]
    shown = "-" if value is None else f"{value:.4g}"
    return {
        "id": row["id"],
        "rule": row["rule"],
        "target": row["target"],
        "variant": row["variant"] or None,
        "state": row["state"],
        "value": value,
        "last_value": d.get("last_value", value),
        "threshold": row["threshold"],
        "unit": unit,
        "comparison": side,
        "window_s": d.get("window"),
        "for_s": d.get("for"),
        "started_at": _iso(row["started_at"]),
        "fired_at": _iso(row["fired_at"]),
        "ended_at": _iso(row["ended_at"]),
        "message": f"{row['rule']} of {where} is {shown} {unit}, {side} the threshold "
        f"{row['threshold']:g} {unit} (window {d.get('window', 0):g}s)",
    }


def active_alerts(engine: Engine) -> list[dict[str, Any]]:
    """Pending and firing alerts, oldest first."""
    t = db.alerts
    with engine.connect() as conn:
        active = conn.execute(select(t).where(t.c.state.in_(OPEN)).order_by(t.c.id)).all()
    return [describe(dict(r._mapping)) for r in active]


def list_alerts(engine: Engine, limit: int = 50) -> dict[str, list[dict[str, Any]]]:
    """Pending and firing alerts, and the most recently resolved ones."""
    t = db.alerts
    active = active_alerts(engine)
    with engine.connect() as conn:
        recent = conn.execute(
            select(t).where(t.c.state == "resolved").order_by(t.c.id.desc()).limit(limit)
        ).all()
    return {"active": active, "recent": [describe(dict(r._mapping)) for r in recent]}


def active_by_target(engine: Engine) -> dict[str, list[str]]:
    """Each target's pending and firing alerts as short labels, e.g. `latency_p95/canary firing`."""
    t = db.alerts
    q = select(t.c.target, t.c.rule, t.c.variant, t.c.state).where(t.c.state.in_(OPEN))
    out: dict[str, list[str]] = {}
    with engine.connect() as conn:
        for target, rule, variant, state in conn.execute(q.order_by(t.c.id)):
            where = f"{rule}/{variant}" if variant else rule
            out.setdefault(target, []).append(f"{where} {state}")
    return out


def evaluate(
    settings: Settings, engine: Engine, notify: Notify | None = None, now: float | None = None
) -> list[dict[str, Any]]:
    """Measure every rule and move alerts along; the transitions this call made."""
    now = time.time() if now is None else now
    t = db.alerts
    with engine.connect() as conn:
        rows = conn.execute(select(t).where(t.c.state.in_(OPEN))).all()
    open_rows = {r.open_key: dict(r._mapping) for r in rows}
    done: list[dict[str, Any]] = []
    seen = set()
    for m in measure(settings, engine, now):
        seen.add(m.key)
        row = open_rows.get(m.key)
        if m.crossed:
            if row is None:
                row = _open(engine, m, now)
                if row is None:
                    continue  # another worker opened it first
                done.append(_log("pending", row))
            started = _aware(row["started_at"]).timestamp()
            # Stored times keep microseconds: a millisecond of slack for rounding.
            if row["state"] == "pending" and now - started >= m.config["for"] - 1e-3:
                fired = _move(engine, row, "firing", now, value=m.value, last=m.value)
                if fired is not None:
                    done.append(_log("firing", fired, notify))
            else:
                _touch(engine, row, m.value)
        elif row is not None:
            done += _close(engine, row, now, m.value, notify)
    # Rules turned off and targets removed leave nothing to judge: their alerts end.
    for key, row in open_rows.items():
        if key not in seen:
            done += _close(engine, row, now, None, notify)
    return done


def _open(engine: Engine, m: Measured, now: float) -> dict[str, Any] | None:
    values = {
        "rule": m.rule,
        "target": m.target,
        "variant": m.variant,
        "open_key": m.key,
        "state": "pending",
        "value": m.value,
        "threshold": m.config["threshold"],
        "started_at": _now_dt(now),
        "fired_at": None,
        "ended_at": None,
        "updated_at": _now_dt(now),
        "detail": {**m.detail, "window": m.config["window"], "for": m.config["for"]},
    }
    try:
        with engine.begin() as conn:
            new_id = conn.execute(db.alerts.insert().values(**values)).inserted_primary_key[0]
    except IntegrityError:
        return None
    return {**values, "id": new_id}


def _move(
    engine: Engine, row: dict[str, Any], state: str, now: float, *, value: Any, last: Any
) -> dict[str, Any] | None:
    """Change the state if nobody else did first; the new row, or None."""
    t = db.alerts
    detail = {**(row.get("detail") or {}), "last_value": last}
    values: dict[str, Any] = {"state": state, "updated_at": _now_dt(now), "detail": detail}
    if state == "firing":
        values |= {"fired_at": _now_dt(now), "value": value}
    if state == "resolved":
        values |= {"ended_at": _now_dt(now), "open_key": None}
    with engine.begin() as conn:
        n = conn.execute(
            t.update().where(t.c.id == row["id"], t.c.state == row["state"]).values(**values)
        ).rowcount
    return {**row, **values} if n else None


def _touch(engine: Engine, row: dict[str, Any], value: float | None) -> None:
    t = db.alerts
    detail = {**(row.get("detail") or {}), "last_value": value}
    values: dict[str, Any] = {"detail": detail}
    if row["state"] == "pending":
        values["value"] = value
    with engine.begin() as conn:
        conn.execute(
            t.update().where(t.c.id == row["id"], t.c.state == row["state"]).values(**values)
        )


def _close(
    engine: Engine, row: dict[str, Any], now: float, value: float | None, notify: Notify | None
) -> list[dict[str, Any]]:
    t = db.alerts
    if row["state"] == "pending":
        # Back within the threshold before it fired: a pending alert leaves no trace.
        with engine.begin() as conn:
            conn.execute(t.delete().where(t.c.id == row["id"], t.c.state == "pending"))
        return []
    resolved = _move(engine, row, "resolved", now, value=None, last=value)
    return [_log("resolved", resolved, notify)] if resolved is not None else []


def _log(event: str, row: dict[str, Any], notify: Notify | None = None) -> dict[str, Any]:
    alert = describe(row)
    level = logging.WARNING if event == "firing" else logging.INFO
    log.log(level, "alert %s: %s", event, alert["message"])
    out = {"event": event, "alert": alert}
    if notify is not None and event in ("firing", "resolved"):
        notify(out)
    return out


# --- the loop in each server worker ----------------------------------------------------------
class Monitor:
    """Writes this worker's samples and evaluates the rules until stopped."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings, self.engine = settings, engine
        self.worker = monitor_samples.worker_id()
        self.buffer = monitor_samples.RequestBuffer()
        self.sampler = monitor_samples.ResourceSampler()
        secret = settings.alert_webhook_secret
        url = settings.alert_webhook_url.get_secret_value() if settings.alert_webhook_url else ""
        self.webhook = (
            Webhook(
                url,
                secret.get_secret_value() if secret else None,
                retries=settings.alert_webhook_retries,
            )
            if url.strip()
            else None
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="alerts")

    def record(self, target: str, variant: str, ok: bool, seconds: float) -> None:
        self.buffer.add(target, variant, ok, seconds)

    def start(self) -> Monitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        try:
            self.buffer.flush(self.engine, self.worker)
        except Exception as exc:
            log.warning("last request samples not written: %s", exc)
        if self.webhook is not None:
            self.webhook.close()

    def _notify(self, event: dict[str, Any]) -> None:
        if self.webhook is not None:
            self.webhook.notify(event)

    def _run(self) -> None:
        interval = self.settings.alert_eval_interval
        tick = min(1.0, interval)
        next_eval = next_prune = 0.0
        while not self._stop.wait(tick):
            now = time.time()
            try:
                self.buffer.flush(self.engine, self.worker)
                if now >= next_eval:
                    next_eval = now + interval
                    monitor_samples.write_resources(self.engine, self.worker, self.sampler.sample())
                    evaluate(self.settings, self.engine, self._notify)
                if now >= next_prune:
                    next_prune = now + 60
                    monitor_samples.prune(self.engine, now - self._keep())
            except Exception as exc:  # a database outage must not end monitoring
                log.warning("alert evaluation failed: %s", exc)

    def _keep(self) -> float:
        every = alert_rules.all_overrides(self.engine)
        windows = [c["window"] for rules in every.values() for c in rules.values() if "window" in c]
        return max([3600.0, 2 * self.settings.alert_window, *(2 * w for w in windows)])

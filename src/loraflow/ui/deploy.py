"""The Models tab's deploy section: put an adapter behind a target, watch, roll back, promote."""

from __future__ import annotations

from typing import Any

import gradio as gr

from loraflow.adapters.deploy import SETTINGS, STRATEGIES
from loraflow.errors import LoraflowError
from loraflow.services.manage import deployments
from loraflow.services.ops import alerts
from loraflow.services.runtime import Runtime
from loraflow.ui.adapters import adapter_refs, kept, number, numbers
from loraflow.ui.context import action
from loraflow.ui.parts import TabParts, bump, refresh_on

# The per-deployment settings the form offers (min_requests stays the global one here).
SETTING_FIELDS = (
    "max_error_rate",
    "max_latency_ratio",
    "health_retries",
    "health_timeout",
    "switch_delay",
    "ab_duration",
)


def settings_line(state: dict[str, Any]) -> str:
    """A deployment's own settings, as stored with it."""
    found = state.get("settings") or {}
    text = ", ".join(f"{k} {v:g}" for k, v in found.items() if k in SETTINGS)
    if state.get("ab_ends_at"):
        metrics = ", ".join(state.get("success_metrics") or [])
        text += f"; A/B ends {state['ab_ends_at'][:19]} ({metrics})"
    return text


def _step_note(step: dict[str, Any]) -> str:
    """The facts of one deploy step worth a glance."""
    name = step.get("step")
    if name == "quality_gate":
        if step.get("forced"):
            return " (forced: " + "; ".join(step.get("reasons") or []) + ")"
        return f" ({step['score']:.1f}, {step['grade']})" if "score" in step else ""
    if name == "load":
        return f": {step.get('engine_name', '')}"
    if name == "health_check":
        tries = step.get("attempts") or []
        return f": {len(tries)} attempt(s), {sum(a.get('seconds', 0) for a in tries):.1f}s"
    if name == "switch":
        return f": version {step.get('version')}"
    if name == "rollback_plan":
        old = step.get("restores") or {}
        return ": restores " + (", ".join(_variants(old)) or "nothing")
    return ""


def _steps(steps: list[dict[str, Any]]) -> list[str]:
    return [f"- {'✓' if s.get('ok') else '✗'} {s['step']}{_step_note(s)}" for s in steps]


def _failed_steps(rt: Runtime, target: str, exc: LoraflowError) -> list[dict[str, Any]]:
    """The steps a failed deploy got through, from the target's newest history event."""
    last = deployments.history(rt, target, limit=1)
    detail = last[0]["detail"] if last and last[0]["action"] == "deploy" else {}
    return detail.get("steps", []) if detail.get("error") == str(exc) else []


def _variants(state: dict[str, Any]) -> list[str]:
    out = [f"{v['name']} {v['adapter']} {float(v['weight']):g}%" for v in state.get("variants", [])]
    if state.get("standby"):
        out.append(f"standby {state['standby']['name']} {state['standby']['adapter']}")
    return out


def deploy_section(parts: TabParts) -> None:
    """Deploy an adapter behind a target name; the deployments with rollback and promote."""
    ctx, t = parts.ctx, parts.ctx.t
    gr.Markdown(f"### {t('deploy_title')}")
    with gr.Row():
        pick = gr.Dropdown(label=t("adapter"), elem_id="models-deploy-adapter", scale=2)
        target = gr.Textbox(label=t("deploy_target"), elem_id="models-deploy-target", scale=2)
        how = gr.Dropdown(
            list(STRATEGIES), value="replace", label=t("strategy"), elem_id="models-strategy"
        )
        where = gr.Dropdown(
            ["local", "remote"],
            value="local",
            label=t("deploy_engine"),
            info=t("deploy_engine_hint"),
            elem_id="models-deploy-engine",
        )
    with gr.Row():
        percent = gr.Textbox(label=t("canary_percent"), placeholder="10")
        split = gr.Textbox(label=t("ab_split"), placeholder=t("ab_split_hint"))
        force = gr.Checkbox(label=t("force_deploy"), elem_id="models-deploy-force")
        go = gr.Button(t("deploy"), variant="primary", elem_id="models-deploy")
    with gr.Accordion(t("deploy_settings"), open=False), gr.Row():
        own = {
            name: gr.Textbox(label=t(name), elem_id=f"models-deploy-{name.replace('_', '-')}")
            for name in SETTING_FIELDS
        }
    outcome = gr.Markdown(elem_id="models-deploy-status")
    gr.Markdown(f"#### {t('deployments')}")
    head = [t("target"), t("strategy"), t("variants"), t("version"), t("live"), t("updated")]
    head.append(t("alerts_column"))
    table = gr.Dataframe(headers=head, interactive=False, elem_id="models-deployments")
    with gr.Row():
        chosen = gr.Dropdown(label=t("target"), elem_id="models-deploy-pick", scale=2)
        variant = gr.Dropdown(label=t("variant"), info=t("variant_hint"), scale=2)
        back = gr.Button(t("rollback"), variant="stop", elem_id="models-rollback")
        promote = gr.Button(t("promote"), elem_id="models-promote")
        again = gr.Button(t("refresh"), elem_id="models-deployments-refresh")
    status = gr.Markdown(elem_id="models-deployments-status")

    def variant_menu(rt: Runtime, name: str | None, current: str | None) -> Any:
        found = deployments.get_deployment(rt, name)["state"]["variants"] if name else []
        names = [v["name"] for v in found]
        return gr.update(choices=names, value=kept(current, names))

    @action
    def refresh(adapter: str | None, name: str | None, current: str | None) -> tuple[Any, ...]:
        rt = ctx.rt()
        refs = adapter_refs(rt)
        rows, targets = [], []
        alerting = alerts.active_by_target(rt.db)
        for d in deployments.list_deployments(rt):
            live = deployments.get_deployment(rt, d["target"])["live"]
            names = [v["name"] for v in d["state"].get("variants", [])]
            counts = {n: live.get(n, {"requests": 0, "errors": 0}) for n in names}
            traffic = [f"{n}: {s['requests']}/{s['errors']}" for n, s in counts.items()]
            updated = (d["updated_at"] or "")[:19].replace("T", " ")
            rows.append(
                [d["target"], d["strategy"], "; ".join(_variants(d["state"]))]
                + [str(d["version"]), "; ".join(traffic), updated]
                + ["; ".join(alerting.get(d["target"], [])) or "—"]
            )
            targets.append(d["target"])
        name = kept(name, targets)
        return (
            gr.update(choices=refs, value=kept(adapter, refs)),
            rows or [[t("no_deployments"), *[""] * 6]],
            gr.update(choices=targets, value=name),
            variant_menu(rt, name, current),
        )

    @ctx.in_status(outcome, "deploy")
    def on_deploy(
        ref: str | None,
        name: str,
        strategy: str,
        engine: str,
        first: str,
        shares: str,
        forced: bool,
        signal: int | None,
        error_rate: str,
        latency_ratio: str,
        retries: str,
        timeout: str,
        delay: str,
        duration: str,
        progress: gr.Progress = gr.Progress(),
    ) -> tuple[str, Any]:
        if not ref:
            raise gr.Error(t("pick_adapter"))
        if not (name or "").strip():
            raise gr.Error(t("give_target"))
        rt, name = ctx.rt(), name.strip()
        percent, split = number(first, "canary percent"), numbers(shares, "A/B split")
        typed = (error_rate, latency_ratio, retries, timeout, delay, duration)
        own_settings = {}
        for key, text in zip(SETTING_FIELDS, typed, strict=True):
            value = number(text, t(key))
            if value is not None:
                own_settings[key] = value
        progress(None, desc=t("deploying"))
        try:
            done = deployments.deploy(
                rt,
                name,
                ref,
                strategy or "replace",
                percent=percent,
                split=split,
                force=bool(forced),
                settings=own_settings,
                engine=engine or "local",
            )
        except LoraflowError as exc:
            # Shown in place with the steps that ran: the previous deployment keeps serving.
            lines = [f"**{t('deploy_failed')}** (`{name}`): {exc}"]
            return "\n".join(lines + _steps(_failed_steps(rt, name, exc))), gr.update()
        lines = [
            f"**{t('deployed')}**: {ref} → `{done['target']}` ({done['strategy']}, "
            f"{t('version')} {done['version']})",
            f"{t('deploy_settings')}: {settings_line(done['state'])}",
        ]
        return "\n".join(lines + _steps(done["steps"])), bump(signal)

    def changed_text(word: str, name: str, now: dict[str, Any]) -> str:
        return f"**{t(word)}**: `{name}` → " + ", ".join(_variants(now["state"]))

    @ctx.in_status(status, "rollback")
    def on_rollback(name: str | None, *shown: Any) -> tuple[Any, ...]:
        if not name:
            raise gr.Error(t("pick_target"))
        now = deployments.rollback(ctx.rt(), name)
        return (changed_text("rolled_back", name, now), *refresh(*shown))

    @ctx.in_status(status, "promote")
    def on_promote(name: str | None, which: str | None, *shown: Any) -> tuple[Any, ...]:
        if not name:
            raise gr.Error(t("pick_target"))
        now = deployments.promote(ctx.rt(), name, which or None)
        return (changed_text("promoted", name, now), *refresh(*shown))

    @action
    def on_target(name: str | None) -> Any:
        return variant_menu(ctx.rt(), name, None)

    listed = [pick, table, chosen, variant]
    shown = [pick, chosen, variant]
    refresh_on(parts, refresh, shown, listed)
    go.click(
        on_deploy,
        [pick, target, how, where, percent, split, force, parts.changed, *own.values()],
        [outcome, parts.changed],
        api_name="deploy_adapter",
    )
    back.click(on_rollback, [chosen, *shown], [status, *listed])
    promote.click(on_promote, [chosen, variant, *shown], [status, *listed])
    again.click(refresh, shown, listed)
    chosen.input(on_target, [chosen], [variant])

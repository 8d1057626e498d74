"""The Status tab: health of every component, the settings (secrets hidden), versions."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

import gradio as gr

from loraflow import __version__
from loraflow.errors import InvalidInput
from loraflow.services.catalog.selection import known_adapters
from loraflow.services.ops import alert_rules, alerts
from loraflow.services.ops import health as ops_health
from loraflow.services.ops.alert_rules import INSTANCE, KINDS
from loraflow.services.ops.checks import settings_rows
from loraflow.ui.context import UIContext, action, cell, optional_decimal

PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "trl",
    "sentence-transformers",
    "faiss-cpu",
    "fastapi",
    "gradio",
    "sqlalchemy",
)


def versions() -> list[list[str]]:
    """loraflow, Python and the main libraries with their installed versions."""
    rows = [["loraflow", __version__], ["python", platform.python_version()]]
    for name in PACKAGES:
        try:
            rows.append([name, metadata.version(name)])
        except metadata.PackageNotFoundError:
            rows.append([name, "-"])
    return rows


def alert_rows(rt: Any) -> list[list[str]]:
    """Firing and pending alerts first, then the recently resolved ones."""
    found = alerts.list_alerts(rt.db, limit=10)
    return [
        [
            a["state"],
            a["rule"],
            a["target"] + (f"/{a['variant']}" if a["variant"] else ""),
            cell(a["message"], 160),
            (a["ended_at"] or a["fired_at"] or a["started_at"] or "")[:19],
        ]
        for a in found["active"] + found["recent"]
    ]


def rule_rows(view: dict[str, Any]) -> list[list[str]]:
    """The rules in force for a target, one row each, marking the ones it overrides."""
    own = view["overrides"]
    return [
        [
            name,
            *(f"{r[k]:g}" for k in ("threshold", "window", "for")),
            r["unit"],
            ", ".join(sorted(own.get(name, {}))),
        ]
        for name, r in view["rules"].items()
    ]


def rule_change(rule: str | None, threshold: Any, window: Any, duration: Any) -> dict[str, Any]:
    """The override typed into the form, as `alert_rules.update` takes it (empty: unchanged)."""
    typed = {"threshold": threshold, "window": window, "for": duration}
    fields = {k: optional_decimal(v, f"{rule}.{k}") for k, v in typed.items()}
    fields = {k: v for k, v in fields.items() if v is not None}
    if not rule or not fields:
        raise InvalidInput(
            f"give a rule ({', '.join(KINDS)}) and at least one of threshold, window, for"
        )
    return {rule: fields}


def build(ctx: UIContext, demo: gr.Blocks, tab: gr.Tab) -> None:
    """Lay out the Status tab and wire its events (call inside a gr.Tab)."""
    t = ctx.t
    overall = gr.Markdown(elem_id="status-overall")
    health = gr.Dataframe(
        headers=[t("component"), t("ok"), t("detail")], interactive=False, elem_id="status-health"
    )
    gr.Markdown(f"### {t('alerts')}")
    alert_table = gr.Dataframe(
        headers=[t("alert_state"), t("alert_rule"), t("target"), t("detail"), t("alert_since")],
        interactive=False,
        elem_id="status-alerts",
    )
    refresh_button = gr.Button(t("refresh"), size="sm", elem_id="status-refresh")
    with gr.Accordion(t("alert_rules"), open=False, elem_id="status-rules-panel"):
        gr.Markdown(t("alert_rules_hint"))
        with gr.Row():
            rule_target = gr.Textbox(
                INSTANCE, label=t("alert_target"), elem_id="status-rules-target"
            )
            rule = gr.Dropdown(
                list(KINDS), value="latency_p95", label=t("alert_rule"), elem_id="status-rules-rule"
            )
            threshold = gr.Textbox(label=t("alert_threshold"), elem_id="status-rules-threshold")
            window = gr.Textbox(label=t("alert_window"), elem_id="status-rules-window")
            duration = gr.Textbox(label=t("alert_for"), elem_id="status-rules-for")
        with gr.Row():
            show = gr.Button(t("show_rules"), size="sm", elem_id="status-rules-show")
            save = gr.Button(
                t("save_rule"), size="sm", variant="primary", elem_id="status-rules-save"
            )
            reset = gr.Button(t("reset_rule"), size="sm", elem_id="status-rules-reset")
        rule_status = gr.Markdown(elem_id="status-rules-status")
        rules_table = gr.Dataframe(
            headers=[
                t("alert_rule"),
                t("alert_threshold"),
                t("alert_window"),
                t("alert_for"),
                t("alert_unit"),
                t("alert_overridden"),
            ],
            interactive=False,
            elem_id="status-rules",
        )
    with gr.Row():
        with gr.Column(scale=3):
            gr.Markdown(f"### {t('settings')}")
            settings = gr.Dataframe(
                headers=[t("variable"), t("value")], interactive=False, elem_id="status-settings"
            )
        with gr.Column(scale=2):
            gr.Markdown(f"### {t('versions')}")
            gr.Dataframe(
                versions(),
                headers=[t("package"), t("version")],
                interactive=False,
                elem_id="status-versions",
            )

    @action
    def refresh() -> tuple[Any, ...]:
        rt = ctx.rt()
        h = ops_health.health(rt)
        d = h["details"]
        store_ok = h["components"]["vector_store"]
        store = (
            t("store_detail").format(documents=d["documents"], chunks=d["chunks"])
            if store_ok
            else d["vector_store"]
        )
        remote_up = h["components"]["ollama_service"]
        detail = {
            "rag_handler": store,
            "vector_store": store,
            "lora_model": (
                t("adapters_detail").format(names=", ".join(known_adapters(rt)))
                if h["components"]["lora_model"]
                else t("no_adapters_detail").format(path=rt.settings.lora_path)
            ),
            # The server's own sentence when it answers (its model, or what is missing).
            "ollama_service": d["ollama_service"]
            if remote_up or "unreachable" not in d["ollama_service"]
            else t("remote_unreachable").format(url=d["remote_base_url"]),
        }
        optional = d["optional"]
        remote_kind = "Ollama" if d["remote_backend"] == "ollama" else "OpenAI-compatible server"

        def row(name: str, ok: bool) -> list[str]:
            if not ok and name in optional:
                # Down, but the current selection does not need it: a note, not a fault.
                why = t("optional_" + name).format(remote=remote_kind)
                return [name, "–", cell(why, 160)]
            return [name, "✓" if ok else "✗", cell(detail.get(name, ""), 160)]

        rows = [row(name, ok) for name, ok in h["components"].items()]
        local = t("loaded") if rt.local is not None else cell(d["local_model"])
        rows.append(["local_model", "✓" if rt.local is not None else "✗", local])
        rows += [["warning", "!", cell(w, 160)] for w in d["warnings"]]
        down = {name for name, ok in h["components"].items() if not ok}
        state = h["status"]
        if state == "degraded" and down <= set(optional):
            state = "ready"  # only optional parts missing, as on a fresh install
        head = f"## {t('overall')}: {t('status_' + state)}"
        settings_table = [[k, v] for k, v in settings_rows(rt.settings)]
        return head, rows, settings_table, alert_rows(rt)

    def target_of(text: str | None) -> str:
        return (text or "").strip() or INSTANCE

    @ctx.in_status(rule_status, "show_rules")
    def on_show(target: str | None) -> tuple[Any, ...]:
        rt = ctx.rt()
        view = alert_rules.view(rt.settings, rt.db, target_of(target))
        return "", rule_rows(view)

    @ctx.in_status(rule_status, "save_rule")
    def on_save(target: str | None, name: str | None, *typed: Any) -> tuple[Any, ...]:
        rt, where = ctx.rt(), target_of(target)
        view = alert_rules.update(rt.settings, rt.db, where, rule_change(name, *typed))
        return f"✓ {t('rule_saved')}: `{where}` {name}", rule_rows(view)

    @ctx.in_status(rule_status, "reset_rule")
    def on_reset(target: str | None, name: str | None) -> tuple[Any, ...]:
        rt, where = ctx.rt(), target_of(target)
        view = alert_rules.reset(rt.settings, rt.db, where, name or None)
        return f"✓ {t('rule_reset')}: `{where}` {name or ''}", rule_rows(view)

    shown_rules = [rule_status, rules_table]
    show.click(on_show, [rule_target], shown_rules)
    rule_target.submit(on_show, [rule_target], shown_rules)
    save.click(
        on_save,
        [rule_target, rule, threshold, window, duration],
        shown_rules,
        api_name="save_alert_rule",
    )
    reset.click(on_reset, [rule_target, rule], shown_rules, api_name="reset_alert_rule")

    outputs = [overall, health, settings, alert_table]
    demo.load(refresh, None, outputs, show_progress="hidden")
    tab.select(refresh, None, outputs, show_progress="hidden")
    refresh_button.click(refresh, None, outputs, api_name="status")

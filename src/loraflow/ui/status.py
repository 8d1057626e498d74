"""The Status tab: health of every component, the settings (secrets hidden), versions."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

import gradio as gr

from loraflow import __version__
from loraflow.services import alerts, models
from loraflow.services.checks import settings_rows
from loraflow.ui.context import UIContext, action, cell

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
        h = models.health(rt)
        d = h["details"]
        detail = {
            "rag_handler": d["vector_store"],
            "vector_store": d["vector_store"],
            "lora_model": d["lora_model"],
            "ollama_service": d["ollama_service"],
        }
        rows = [
            [name, "✓" if ok else "✗", cell(detail.get(name, ""), 160)]
            for name, ok in h["components"].items()
        ]
        rows.append(["local_model", "✓" if rt.local is not None else "✗", cell(d["local_model"])])
        rows += [["warning", "!", cell(w, 160)] for w in d["warnings"]]
        head = f"## {t('overall')}: {t('status_' + h['status'])}"
        settings_table = [[k, v] for k, v in settings_rows(rt.settings)]
        return head, rows, settings_table, alert_rows(rt)

    outputs = [overall, health, settings, alert_table]
    demo.load(refresh, None, outputs, show_progress="hidden")
    tab.select(refresh, None, outputs, show_progress="hidden")
    refresh_button.click(refresh, None, outputs, api_name="status")

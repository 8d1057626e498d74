"""The Models tab: which model answers, loaded and trained adapters, the adapter registry.

The tab is sub-tabs of sections (SUBTABS), each a function laying out one part; the adapter
registry's sections (scan, merge, validate, deploy, export) live in loraflow.ui.adapters and
loraflow.ui.deploy. A new part is one more function added there; an action that changes
what is loaded puts `bump(...)` into `parts.changed`, and a section showing adapters re-reads
them with `refresh_on(parts, ...)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from loraflow.services.catalog import names as catalog
from loraflow.services.catalog import selection as models
from loraflow.services.ops import health
from loraflow.services.runtime import Runtime
from loraflow.services.serve.lora_serving import load_lora, unload_lora
from loraflow.services.train import jobs as training
from loraflow.ui import adapters, deploy
from loraflow.ui.context import BASE, OLLAMA, UIContext, action, remote_label
from loraflow.ui.parts import Section, TabParts, bump, refresh_on


def loaded_adapters(rt: Runtime) -> dict[str, Path]:
    """Adapters the local engine holds now, with their folders."""
    return rt.local.adapter_paths() if rt.local is not None else {}


def trained_adapters(rt: Runtime) -> list[dict[str, Any]]:
    """Completed training jobs whose adapter folder exists, newest first."""
    out = []
    for task in training.list_tasks(rt):
        folder = Path(task["output_path"])
        if task["status"] == "completed" and (folder / "adapter_config.json").is_file():
            out.append({**task, "folder": folder})
    return out


def selection_section(parts: TabParts) -> None:
    """The model that answers requests that do not choose one, and switching it."""
    ctx, t = parts.ctx, parts.ctx.t
    gr.Markdown(f"### {t('default_model')}")
    info = gr.Markdown(elem_id="models-selection")
    with gr.Row():
        choice = gr.Dropdown(label=t("model"), elem_id="models-switch-choice", scale=3)
        switch = gr.Button(t("use_as_default"), elem_id="models-switch", scale=1)
    switch_status = gr.Markdown(elem_id="models-switch-status")

    def _info(rt: Runtime) -> str:
        m = health.model_info(rt)
        remote = remote_label(rt)
        used = {"base": t("model_base"), m["remote_backend"]: remote}.get(
            m["model_used"], f"LoRA {m['adapter']}"
        )
        local = t("loaded") if m["local_model_loaded"] else m["local_model_error"]
        return (
            f"**{t('answering_with')}**: {used}  \n"
            f"**{t('base_model')}**: {m['base_model']} ({local}; {m['device'] or '-'})  \n"
            f"**{t('embedding_model')}**: {m['embedding_model']}"
        )

    @action
    def refresh(current: str | None) -> tuple[str, Any]:
        rt = ctx.rt()
        choices = [(t("model_base"), BASE), (remote_label(rt), OLLAMA)]
        choices += [(f"LoRA: {n}", n) for n in loaded_adapters(rt)]
        sel = models.current_selection(rt)
        default = OLLAMA if sel.engine != "local" else (sel.adapter or BASE)
        values = [v for _, v in choices]
        return _info(rt), gr.update(
            choices=choices, value=current if current in values else default
        )

    @ctx.in_status(switch_status, "use_as_default")
    def on_switch(picked: str | None, signal: int | None) -> tuple[str, int, str]:
        rt = ctx.rt()
        if picked == OLLAMA:
            catalog.switch_model(rt, engine="ollama")
        elif picked == BASE or not picked:
            catalog.switch_model(rt, engine="local")
        else:
            catalog.switch_model(rt, engine="local", adapter=picked)
        return _info(rt), bump(signal), ""

    refresh_on(parts, refresh, [choice], [info, choice])
    switch.click(
        on_switch,
        [choice, parts.changed],
        [info, parts.changed, switch_status],
        api_name="switch_model",
    )


def loaded_section(parts: TabParts) -> None:
    """Adapters the local engine serves now: list, load a folder, unload."""
    ctx, t = parts.ctx, parts.ctx.t
    gr.Markdown(f"### {t('loaded_adapters')}")
    table = gr.Dataframe(
        headers=[t("name"), t("folder")], interactive=False, elem_id="models-loaded"
    )
    with gr.Row():
        unload_pick = gr.Dropdown(label=t("adapter"), elem_id="models-unload-pick", scale=3)
        unload = gr.Button(t("unload"), variant="stop", elem_id="models-unload", scale=1)
    with gr.Row():
        name = gr.Textbox(label=t("adapter_name"), elem_id="models-load-name", scale=2)
        folder = gr.Textbox(
            label=t("adapter_folder"), placeholder=t("adapter_folder_hint"), scale=3
        )
        replace = gr.Checkbox(label=t("replace_loaded"), scale=1)
        load = gr.Button(t("load_folder"), elem_id="models-load", scale=1)
    status = gr.Markdown(elem_id="models-loaded-status")

    @action
    def refresh() -> tuple[Any, Any]:
        found = loaded_adapters(ctx.rt())
        rows = [[n, str(p)] for n, p in found.items()] or [[t("none"), ""]]
        return rows, gr.update(choices=list(found), value=None)

    @ctx.in_status(status, "load_folder")
    def on_load(n: str, path: str, swap: bool, signal: int | None) -> tuple[str, int]:
        done = load_lora(ctx.rt(), (n or "").strip(), (path or "").strip(), replace=bool(swap))
        return f"{t('loaded')}: {done['lora_name']} ← {done['lora_path']}", bump(signal)

    @ctx.in_status(status, "unload")
    def on_unload(n: str | None, signal: int | None) -> tuple[str, int]:
        if not n:
            raise gr.Error(t("pick_adapter"))
        unload_lora(ctx.rt(), n)
        return f"{t('unloaded')}: {n}", bump(signal)

    refresh_on(parts, refresh, [], [table, unload_pick])
    load.click(on_load, [name, folder, replace, parts.changed], [status, parts.changed])
    unload.click(on_unload, [unload_pick, parts.changed], [status, parts.changed])


def trained_section(parts: TabParts) -> None:
    """Adapters written by completed training jobs, each loadable with one click."""
    ctx, t = parts.ctx, parts.ctx.t
    gr.Markdown(f"### {t('trained_adapters')}")
    table = gr.Dataframe(
        headers=["#", t("task"), t("base_model"), t("completed"), t("is_loaded"), t("folder")],
        interactive=False,
        elem_id="models-trained",
    )
    with gr.Row():
        pick = gr.Dropdown(label=t("trained_adapter"), elem_id="models-trained-pick", scale=3)
        as_name = gr.Textbox(label=t("adapter_name"), placeholder=t("default_task_name"), scale=2)
        load = gr.Button(
            t("load_trained"), variant="primary", elem_id="models-trained-load", scale=1
        )
    status = gr.Markdown(elem_id="models-trained-status")

    @action
    def refresh(current: int | None) -> tuple[Any, Any]:
        rt = ctx.rt()
        live = {p.resolve() for p in loaded_adapters(rt).values()}
        found = trained_adapters(rt)
        rows = [
            [
                x["task_id"],
                x["task_name"],
                x["base_model"],
                (x["completed_at"] or "")[:19].replace("T", " "),
                "✓" if x["folder"].resolve() in live else "",
                str(x["folder"]),
            ]
            for x in found
        ]
        choices = [(f"#{x['task_id']} {x['task_name']}", x["task_id"]) for x in found]
        ids = [x["task_id"] for x in found]
        return rows, gr.update(choices=choices, value=current if current in ids else None)

    @ctx.in_status(status, "load_trained")
    def on_load(task_id: int | None, n: str, signal: int | None) -> tuple[str, int]:
        rt = ctx.rt()
        if task_id is None:
            raise gr.Error(t("pick_trained"))
        task = training.get_task(rt, int(task_id))
        adapter = (n or "").strip() or task["task_name"]
        done = load_lora(rt, adapter, task["output_path"])
        return f"{t('loaded')}: {done['lora_name']} ← {done['lora_path']}", bump(signal)

    refresh_on(parts, refresh, [pick], [table, pick])
    load.click(
        on_load, [pick, as_name, parts.changed], [status, parts.changed], api_name="load_trained"
    )


# The tab's sub-tabs (label key, sections), in order: which model answers and the adapters
# there are, then one sub-tab per registry action.
SUBTABS: list[tuple[str, list[Section]]] = [
    (
        "sub_adapters",
        [selection_section, loaded_section, trained_section, adapters.registry_section],
    ),
    ("sub_merge", [adapters.merge_section]),
    ("sub_validate", [adapters.validate_section]),
    ("sub_deploy", [deploy.deploy_section]),
    ("sub_export", [adapters.export_section]),
]


def build(ctx: UIContext, demo: gr.Blocks, tab: gr.Tab) -> None:
    """Lay out the Models tab as sub-tabs of SUBTABS' sections (call inside a gr.Tab)."""
    parts = TabParts(ctx, demo, tab, gr.State(0))
    with gr.Tabs(elem_id="models-subtabs"):
        for key, sections in SUBTABS:
            with gr.Tab(ctx.t(key), elem_id=f"models-{key.replace('_', '-')}"):
                for section in sections:
                    section(parts)

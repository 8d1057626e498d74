"""The Assistants tab: named bindings of a system prompt, a model or adapter, knowledge bases
and generation defaults; list, create, edit, delete."""

from __future__ import annotations

from typing import Any

import gradio as gr

from loraflow.engines.remote import is_remote
from loraflow.rag.hybrid import MODES
from loraflow.services.catalog import assistants
from loraflow.services.catalog.assistants import Assistant
from loraflow.services.know import knowledge
from loraflow.services.runtime import Runtime
from loraflow.ui.context import (
    UIContext,
    action,
    cell,
    optional_decimal,
    optional_whole,
    parse_stops,
)


def _settings(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" if k == "stop" else f"{k}={v}" for k, v in values.items())


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _rows(items: list[Assistant]) -> list[list[Any]]:
    return [
        [
            assistants.MODEL_PREFIX + a.name,
            a.engine,
            a.adapter or "",
            ", ".join(a.collections),
            cell(a.system_prompt, 80),
            _settings({**a.generation, **{k: v for k, v in a.retrieval.items() if k != "notices"}}),
            "; ".join(a.retrieval.get("notices", [])),
            a.updated_at,
        ]
        for a in items
    ]


def build(ctx: UIContext, demo: gr.Blocks, tab: gr.Tab) -> None:
    """Lay out the Assistants tab and wire its events (call inside a gr.Tab)."""
    t = ctx.t
    gr.Markdown(t("assistants_intro"))
    table = gr.Dataframe(
        headers=[
            t("assistant_model"),
            t("engine"),
            t("adapter"),
            t("knowledge_bases"),
            t("system_prompt"),
            t("defaults"),
            t("notices"),
            t("updated"),
        ],
        interactive=False,
        wrap=True,
        elem_id="assistants-list",
    )
    pick = gr.Dropdown(label=t("assistant_pick"), elem_id="assistants-pick")
    with gr.Group():
        with gr.Row():
            name = gr.Textbox(label=t("name"), elem_id="assistants-name")
            description = gr.Textbox(label=t("description"), elem_id="assistants-description")
        prompt = gr.Textbox(label=t("system_prompt"), lines=3, elem_id="assistants-prompt")
        with gr.Row():
            engine = gr.Dropdown(
                [(t("engine_local"), "local"), (t("engine_remote"), "remote")],
                value="local",
                label=t("engine"),
                elem_id="assistants-engine",
            )
            # Custom values: with the remote engine it names one of that server's models or
            # LoRA modules (vLLM), which are not in the local list.
            adapter = gr.Dropdown(
                [(t("none"), "")],
                value="",
                label=t("adapter"),
                allow_custom_value=True,
                elem_id="assistants-adapter",
            )
            collections = gr.Dropdown(
                multiselect=True, label=t("knowledge_bases"), elem_id="assistants-collections"
            )
        # Text fields, not gr.Number: an empty one means "not set" (the service default).
        with gr.Row():
            most = gr.Textbox(label=t("max_tokens"), elem_id="assistants-max-tokens")
            temperature = gr.Textbox(label=t("temperature"), elem_id="assistants-temperature")
            top_p = gr.Textbox(label="top-p", elem_id="assistants-top-p")
            top_k = gr.Textbox(label="top-k", elem_id="assistants-top-k")
            chunks = gr.Textbox(label=t("top_k_chunks"), elem_id="assistants-k")
            mode = gr.Dropdown(
                [(t("setting_default"), ""), *((m, m) for m in MODES)],
                value="",
                label=t("retrieval_mode"),
                elem_id="assistants-mode",
            )
        stops = gr.Textbox(label=t("stop_strings"), lines=2, placeholder=t("one_per_line"))
        gr.Markdown(f"_{t('empty_uses_default')}_")
        with gr.Row():
            create = gr.Button(
                t("create_assistant"), variant="primary", elem_id="assistants-create"
            )
            save = gr.Button(t("save_assistant"), elem_id="assistants-save")
            delete = gr.Button(t("delete"), variant="stop", elem_id="assistants-delete")
    status = gr.Markdown(elem_id="assistants-status")

    fields = [
        name,
        description,
        prompt,
        engine,
        adapter,
        collections,
        most,
        temperature,
        top_p,
        top_k,
        chunks,
        mode,
        stops,
    ]

    def _spec(*values: Any) -> dict[str, Any]:
        nm, desc, sp, eng, ad, cols, mx, temp, p, k, n, md, st = values
        generation = {
            "max_new_tokens": optional_whole(mx, t("max_tokens")),
            "temperature": optional_decimal(temp, t("temperature")),
            "top_p": optional_decimal(p, "top-p"),
            "top_k": optional_whole(k, "top-k"),
            "stop": parse_stops(st),
        }
        retrieval = {"top_k": optional_whole(n, t("top_k_chunks")), "mode": md or None}
        return {
            "name": (nm or "").strip(),
            "description": desc or "",
            "system_prompt": sp or "",
            "engine": eng or "local",
            "adapter": ad or None,
            "collections": list(cols or []),
            # The form holds every setting: one left empty is removed from the assistant.
            "generation": {k: v for k, v in generation.items() if v not in (None, [])},
            "retrieval": {k: v for k, v in retrieval.items() if v is not None},
        }

    def _view(rt: Runtime, keep: str | None) -> tuple[Any, ...]:
        items = assistants.list_assistants(rt)
        names = [a.name for a in items]
        return _rows(items), gr.update(choices=names, value=keep if keep in names else None)

    @action
    def refresh(keep: str | None, picked_adapter: str | None, picked: list[str] | None) -> tuple:
        rt = ctx.rt()
        adapters = assistants.adapter_names(rt)
        cols = [c["name"] for c in knowledge.list_collections(rt)]
        return (
            *_view(rt, keep),
            gr.update(
                choices=[(t("none"), ""), *((a, a) for a in adapters)],
                value=picked_adapter or "",
            ),
            gr.update(choices=cols, value=[c for c in picked or [] if c in cols]),
        )

    @action
    def on_pick(picked: str | None) -> tuple[Any, ...]:
        if not picked:
            return tuple(gr.update() for _ in fields)
        a = assistants.get_assistant(ctx.rt(), picked)
        gen, ret = a.generation, a.retrieval
        return (
            a.name,
            a.description,
            a.system_prompt,
            "remote" if is_remote(a.engine) else "local",
            a.adapter or "",
            a.collections,
            *(_text(gen.get(k)) for k in ("max_new_tokens", "temperature", "top_p", "top_k")),
            _text(ret.get("top_k")),
            ret.get("mode") or "",
            "\n".join(gen.get("stop", [])),
        )

    @ctx.in_status(status, "create_assistant")
    def on_create(*values: Any) -> tuple[Any, ...]:
        rt = ctx.rt()
        a = assistants.create_assistant(rt, _spec(*values))
        return (f"{t('created')}: {assistants.MODEL_PREFIX}{a.name}", *_view(rt, a.name))

    @ctx.in_status(status, "save_assistant")
    def on_save(picked: str | None, *values: Any) -> tuple[Any, ...]:
        rt = ctx.rt()
        if not picked:
            raise gr.Error(t("pick_assistant"))
        a = assistants.update_assistant(rt, picked, _spec(*values))
        return (f"{t('saved')}: {assistants.MODEL_PREFIX}{a.name}", *_view(rt, a.name))

    @ctx.in_status(status, "delete")
    def on_delete(picked: str | None) -> tuple[Any, ...]:
        rt = ctx.rt()
        if not picked:
            raise gr.Error(t("pick_assistant"))
        a = assistants.delete_assistant(rt, picked)
        return (f"{t('deleted')}: {assistants.MODEL_PREFIX}{a.name}", *_view(rt, None))

    listing = [table, pick, adapter, collections]
    demo.load(refresh, [pick, adapter, collections], listing, show_progress="hidden")
    # Opening the tab again offers adapters loaded and knowledge bases created since.
    tab.select(refresh, [pick, adapter, collections], listing, show_progress="hidden")
    # Only a pick by the user fills the form: Create and Save set the menu themselves, and a
    # reload of the form they just sent could land after the user's next edit and undo it.
    pick.input(on_pick, pick, fields, show_progress="hidden")
    # Progress and errors show on the status line, not over the form being corrected.
    done = [status, table, pick]
    create.click(on_create, fields, done, api_name="assistant_create", show_progress_on=status)
    save.click(on_save, [pick, *fields], done, api_name="assistant_save", show_progress_on=status)
    delete.click(on_delete, pick, done, api_name="assistant_delete", show_progress_on=status)

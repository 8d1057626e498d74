"""Knowledge-base management inside the Ask tab: create, rename and delete collections."""

from __future__ import annotations

from typing import Any

import gradio as gr

from loraflow.errors import Conflict
from loraflow.rag.chunking import check_kb_chunking
from loraflow.rag.collections import DEFAULT
from loraflow.services.know import knowledge
from loraflow.services.runtime import Runtime
from loraflow.ui.context import UIContext, action, whole


def collection_names(rt: Runtime) -> list[str]:
    """Every collection's name, `default` first."""
    return [c["name"] for c in knowledge.list_collections(rt)] or [DEFAULT]


def describe(ctx: UIContext, c: dict[str, Any]) -> str:
    """One line about a collection: model, chunking, size and the assistants using it."""
    t = ctx.t
    parts = [
        f"**{c['name']}**",
        f"{t('embedding_model')}: `{c['embedding_model']}`",
        f"{t('chunk_size')} {c['chunk_size']} / {t('chunk_overlap')} {c['chunk_overlap']}",
        f"{t('documents')}: {c['documents'] if c['documents'] is not None else c['status']}",
    ]
    if c["assistants"]:
        parts.append(f"{t('used_by_assistants')}: {', '.join(c['assistants'])}")
    return " · ".join(parts)


def build(ctx: UIContext, demo: gr.Blocks, tab: gr.Tab, collection: gr.Dropdown) -> None:
    """Lay out the manager and wire it to the Ask tab's `collection` dropdown."""
    t = ctx.t
    s = ctx.settings
    with gr.Accordion(t("manage_kbs"), open=False, elem_id="kb-manage"):
        info = gr.Markdown(elem_id="kb-info")
        with gr.Row():
            new_name = gr.Textbox(label=t("new_kb_name"), elem_id="kb-new-name", scale=2)
            model = gr.Dropdown(
                label=t("embedding_model"),
                info=t("embedding_model_hint"),
                allow_custom_value=True,
                elem_id="kb-embedding",
                scale=2,
            )
            # No minimum or maximum here: Gradio would refuse a value out of them before the
            # handler runs, with a toast that names neither the field nor the allowed range.
            size = gr.Number(
                label=t("chunk_size"),
                value=s.chunk_size,
                precision=0,
                elem_id="kb-chunk-size",
                scale=1,
            )
            overlap = gr.Number(
                label=t("chunk_overlap"),
                value=s.chunk_overlap,
                precision=0,
                elem_id="kb-chunk-overlap",
                scale=1,
            )
            create = gr.Button(t("create_kb"), variant="primary", elem_id="kb-create", scale=1)
        with gr.Row():
            rename_to = gr.Textbox(label=t("rename_kb_to"), elem_id="kb-rename-to", scale=2)
            rename = gr.Button(t("rename_kb"), elem_id="kb-rename", scale=1)
            force = gr.Checkbox(label=t("force_delete_kb"), elem_id="kb-force", scale=2)
            delete = gr.Button(t("delete_kb"), variant="stop", elem_id="kb-delete", scale=1)
        status = gr.Markdown(elem_id="kb-status")

    def _pick(rt: Runtime, name: str) -> Any:
        return gr.update(choices=collection_names(rt), value=name)

    @action
    def refresh(current: str | None) -> Any:
        choices = knowledge.embedding_model_choices(ctx.rt())
        return gr.update(choices=choices, value=current or choices[0])

    @action
    def on_collection(name: str | None) -> str:
        if not name:
            return ""
        return describe(ctx, knowledge.get_collection(ctx.rt(), name))

    @ctx.in_status(status, "create_kb")
    def on_create(name: str, embedder: str | None, chunk: Any, ov: Any) -> tuple[Any, ...]:
        rt = ctx.rt()
        # The service's rule, checked here too so that an empty field (which the service would
        # fill with the default) is refused, and the message names the fields as labelled.
        chunk, ov = whole(chunk), whole(ov)
        check_kb_chunking(chunk, ov, (t("chunk_size"), t("chunk_overlap")))
        c = knowledge.create_collection(
            rt, (name or "").strip(), (embedder or "").strip() or None, chunk, ov
        )
        return _pick(rt, c["name"]), "", f"{t('created')}: {describe(ctx, c)}"

    @ctx.in_status(status, "rename_kb")
    def on_rename(name: str | None, new: str) -> tuple[Any, ...]:
        rt = ctx.rt()
        c = knowledge.rename_collection(rt, name or DEFAULT, (new or "").strip())
        return _pick(rt, c["name"]), "", f"{t('renamed')}: {name} → {c['name']}"

    @ctx.in_status(status, "delete_kb")
    def on_delete(name: str | None, forced: bool) -> tuple[Any, ...]:
        rt = ctx.rt()
        try:
            done = knowledge.delete_collection(rt, name or DEFAULT, force=bool(forced))
        except Conflict as exc:  # in use by assistants: the service's hint names the API's flag
            hint = t("kb_in_use_hint").format(box=t("force_delete_kb"), button=t("delete_kb"))
            raise Conflict(exc.message, hint=hint) from exc
        message = f"{t('deleted')}: {done['deleted']['name']}"
        if done["detached_assistants"]:
            message += f" ({t('detached_assistants')}: {', '.join(done['detached_assistants'])})"
        return _pick(rt, DEFAULT), False, message

    demo.load(refresh, model, model, show_progress="hidden")
    tab.select(refresh, model, model, show_progress="hidden")
    collection.change(on_collection, collection, info, show_progress="hidden")
    # Progress and failures show on the status line only: an error overlay on the dropdown,
    # the name or the force box would keep them from being changed for the next try.
    on_status: dict[str, Any] = {"show_progress_on": status}
    create.click(
        on_create,
        [new_name, model, size, overlap],
        [collection, new_name, status],
        api_name="create_collection",
        **on_status,
    )
    rename.click(on_rename, [collection, rename_to], [collection, rename_to, status], **on_status)
    delete.click(on_delete, [collection, force], [collection, force, status], **on_status)

"""The Ask tab: questions answered from the knowledge base with sources, and its documents."""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import gradio as gr

from loraflow import db
from loraflow.errors import NotFound
from loraflow.rag.collections import DEFAULT
from loraflow.services.catalog import assistants
from loraflow.services.know import documents, knowledge
from loraflow.services.know.ask import AskRequest, ask_stream
from loraflow.services.runtime import Runtime
from loraflow.ui import knowledge_bases
from loraflow.ui.context import (
    UIContext,
    action,
    cell,
    failure,
    model_choices,
    model_request,
    whole,
)

# The chat is kept in the database, so a reload or a second browser shows the same history.
HISTORY_KEY = "ui.ask_history"
MAX_HISTORY = 200
# How often a streamed answer is redrawn while it is generated (seconds).
STREAM_REFRESH_S = 0.15


def load_history(rt: Runtime) -> list[dict[str, str]]:
    """The Ask tab's saved chat messages (oldest first)."""
    saved = db.get_state(rt.db, HISTORY_KEY, [])
    return saved if isinstance(saved, list) else []


def _save_history(rt: Runtime, messages: list[dict[str, str]]) -> None:
    db.set_state(rt.db, HISTORY_KEY, messages[-MAX_HISTORY:])


def sources_markdown(ctx: UIContext, sources: list[dict[str, Any]]) -> str:
    """The numbered sources of one answer, as Markdown."""
    if not sources:
        return f"**{ctx.t('sources')}**: {ctx.t('no_sources')}"
    lines = [f"**{ctx.t('sources')}**"]
    for s in sources:
        quote = cell(s.get("quote") or s.get("content"), 220)
        # Named knowledge bases are shown; the default one is what a plain question uses.
        where = f"{s['collection']} › " if s.get("collection") not in (None, DEFAULT) else ""
        lines.append(
            f"{s['index']}. {where}`{cell(s['source'], 80)}` · {ctx.t('chunk')} {s['chunk']} · "
            f"{ctx.t('score')} {s['score']:.3f} — {quote}"
        )
    return "\n".join(lines)


def assistant_note(ctx: UIContext, rt: Runtime, choice: str | None) -> str:
    """For an assistant picked as the model: the knowledge bases it answers from, since the
    tab's own knowledge base and chunk count do not apply to it. Empty for any other model."""
    name = model_request(choice).get("assistant")
    if name is None:
        return ""
    try:
        a = assistants.get_assistant(rt, name)
    except NotFound:  # deleted meanwhile: the next refresh takes it out of the menu
        return ""
    shown = f"**{assistants.MODEL_PREFIX}{a.name}**"
    if not a.collections:
        return ctx.t("assistant_no_kbs_note").format(name=shown)
    return ctx.t("assistant_kbs_note").format(name=shown, kbs=", ".join(a.collections))


def _collection(name: str | None) -> str | None:
    return None if not name or name == DEFAULT else name


def build(ctx: UIContext, demo: gr.Blocks, tab: gr.Tab) -> None:
    """Lay out the Ask tab and wire its events (call inside a gr.Tab)."""
    t = ctx.t
    with gr.Row():
        model = gr.Dropdown(label=t("model"), elem_id="ask-model", scale=2)
        collection = gr.Dropdown(label=t("knowledge_base"), elem_id="ask-collection", scale=2)
        top_k = gr.Number(
            label=t("top_k_chunks"),
            value=ctx.settings.retrieval_top_k,
            precision=0,
            minimum=1,
            maximum=50,
            elem_id="ask-top-k",
            scale=1,
        )
    # Says when the knowledge base and chunk count above do not apply (an assistant's own do).
    note = gr.Markdown(elem_id="ask-assistant-note")
    knowledge_bases.build(ctx, demo, tab, collection)
    chat = gr.Chatbot(label=t("chat"), elem_id="ask-chat", height=420)
    with gr.Row():
        question = gr.Textbox(
            label=t("question"), placeholder=t("question_hint"), elem_id="ask-question", scale=5
        )
        send = gr.Button(t("ask"), variant="primary", elem_id="ask-send", scale=1)
    ask_status = gr.Markdown(elem_id="ask-status")
    clear = gr.Button(t("clear_history"), size="sm", elem_id="ask-clear")
    with gr.Accordion(t("documents"), open=True):
        files = gr.File(
            label=t("upload_documents"),
            file_count="multiple",
            file_types=[".txt", ".md", ".pdf", ".json", ".jsonl"],
            type="filepath",
            elem_id="ask-upload",
        )
        upload = gr.Button(t("upload_ingest"), elem_id="ask-upload-go")
        upload_status = gr.Markdown(elem_id="ask-upload-status")
        docs = gr.Dataframe(
            headers=[t("source"), t("chunks"), t("characters"), t("added"), "doc_id"],
            interactive=False,
            elem_id="ask-documents",
        )
        with gr.Row():
            doc_pick = gr.Dropdown(label=t("document"), scale=3)
            delete = gr.Button(t("delete_document"), variant="stop", scale=1)

    def _docs(rt: Runtime, name: str | None) -> tuple[list[list[Any]], Any]:
        items = knowledge.list_documents(rt, _collection(name))
        rows = [[d["source"], d["n_chunks"], d["chars"], d["added_at"], d["doc_id"]] for d in items]
        choices = [(f"{d['source']} ({d['doc_id'][:8]})", d["doc_id"]) for d in items]
        return rows, gr.update(choices=choices, value=None)

    def _model_view(rt: Runtime, choice: str | None) -> tuple[str, Any]:
        """The note for one model choice, and whether the chunk count can be changed: not
        for an assistant, which retrieves with its own."""
        mine = "assistant" not in model_request(choice)
        return assistant_note(ctx, rt, choice), gr.update(interactive=mine)

    @action
    def refresh(name: str | None, current_model: str | None) -> tuple[Any, ...]:
        rt = ctx.rt()
        names = knowledge_bases.collection_names(rt)
        name = name if name in names else (DEFAULT if DEFAULT in names else names[0])
        choices = model_choices(ctx, rt, with_assistants=True)
        values = [v for _, v in choices]
        picked = current_model if current_model in values else values[0]
        rows, pick = _docs(rt, name)
        return (
            gr.update(choices=choices, value=picked),
            gr.update(choices=names, value=name),
            load_history(rt),
            rows,
            pick,
            *_model_view(rt, picked),
        )

    def on_ask(
        q: str, choice: str | None, name: str | None, k: float | None
    ) -> Iterator[tuple[Any, str, str]]:
        history: list[dict[str, str]] = []
        try:
            rt = ctx.rt()
            history = load_history(rt)
            yield from _answer(rt, history, q, choice, name, k)
        except Exception as exc:  # said under the question; the chat and question stay
            heading = t("action_failed").format(action=t("ask"))
            yield history, q, f"✗ **{heading}**: {failure(exc)}"

    def _answer(
        rt: Runtime,
        history: list[dict[str, str]],
        q: str,
        choice: str | None,
        name: str | None,
        k: float | None,
    ) -> Iterator[tuple[Any, str, str]]:
        pending = [*history, {"role": "user", "content": q}]
        yield pending, "", ""
        fields = model_request(choice)
        # An assistant answers from its own knowledge bases with its own chunk count,
        # whichever knowledge base and count are picked here.
        mine = "assistant" not in fields
        coll, top_k = (_collection(name), whole(k)) if mine else (None, None)
        answer = ask_stream(rt, AskRequest(query=q, top_k=top_k, collection=coll, **fields))
        sources = sources_markdown(ctx, answer.source_documents)
        # Shown at once, before the first token: who answers, then the text as it comes.
        yield [*pending, {"role": "assistant", "content": f"_{t('answering')}_"}], "", ""
        text, shown = "", time.monotonic()
        try:
            for piece in answer.pieces:
                text += piece
                if time.monotonic() - shown >= STREAM_REFRESH_S:
                    shown = time.monotonic()
                    yield [*pending, {"role": "assistant", "content": text + " ▍"}], "", ""
        finally:
            answer.close()
        used = answer.model_used + (f" ({answer.adapter})" if answer.adapter else "")
        if answer.assistant:
            used += f" · {t('assistant')} {answer.assistant}"
        note = f"\n\n_{t('answered_by')} {used} · {answer.processing_time:.1f} s_"
        if answer.fallback:
            note += f"\n\n_{answer.fallback}_"
        body = f"{text.strip()}{note}\n\n{sources}"
        # Re-read: another browser may have asked something meanwhile.
        messages = [*load_history(rt), pending[-1], {"role": "assistant", "content": body}]
        _save_history(rt, messages)
        yield messages, "", ""

    @action
    def on_clear() -> list[dict[str, str]]:
        _save_history(ctx.rt(), [])
        return []

    @ctx.in_status(upload_status, "upload_ingest")
    def on_upload(paths: list[str] | None, name: str | None, progress=gr.Progress()) -> tuple:
        rt = ctx.rt()
        if not paths:
            raise gr.Error(t("no_file_chosen"))
        coll = _collection(name)
        if coll is not None:
            knowledge.get_collection(rt, coll)  # an unknown collection is refused first

        def step(source: str, done: int, total: int) -> None:
            progress((done, total), desc=source)

        handles = [open(p, "rb") for p in paths]  # noqa: SIM115 - closed below
        try:
            report = documents.ingest_uploads(
                rt,
                ((Path(p).name, h) for p, h in zip(paths, handles, strict=True)),
                ingest_fn=partial(knowledge.ingest, rt, coll, progress=step),
            )
        finally:
            for h in handles:
                h.close()
        parts = [f"{t('added')}: {', '.join(d.source for d in report.added) or '-'}"]
        if report.replaced:
            parts.append(f"{t('replaced')}: {', '.join(report.replaced)}")
        if report.unchanged:
            parts.append(f"{t('unchanged')}: {', '.join(report.unchanged)}")
        for source, reason in report.failed:
            parts.append(f"{t('failed')}: {source}: {reason}")
        rows, pick = _docs(rt, name)
        return "  \n".join(parts), rows, pick, None

    @ctx.in_status(upload_status, "delete_document")
    def on_delete(doc_id: str | None, name: str | None) -> tuple:
        rt = ctx.rt()
        if not doc_id:
            raise gr.Error(t("pick_document"))
        info = knowledge.delete_document(rt, _collection(name), doc_id)
        rows, pick = _docs(rt, name)
        return f"{t('deleted')}: {info['source']}", rows, pick

    @action
    def on_collection(name: str | None) -> tuple:
        return _docs(ctx.rt(), name)

    @action
    def on_model(choice: str | None) -> tuple[str, Any]:
        return _model_view(ctx.rt(), choice)

    outputs = [model, collection, chat, docs, doc_pick, note, top_k]
    demo.load(refresh, [collection, model], outputs, show_progress="hidden")
    ask_event: dict[str, Any] = {"fn": on_ask, "inputs": [question, model, collection, top_k]}
    asked = [chat, question, ask_status]
    send.click(**ask_event, outputs=asked, api_name="ask", concurrency_limit=8)
    question.submit(**ask_event, outputs=asked, concurrency_limit=8)
    clear.click(on_clear, None, chat, api_name="ask_clear")
    # The chat's own trash button clears the saved history too.
    chat.clear(on_clear, None, chat)
    upload.click(
        on_upload,
        [files, collection],
        [upload_status, docs, doc_pick, files],
        api_name="upload_documents",
    ).then(
        # Read the list again once the upload has ended: a page-load refresh that started
        # before the upload may have answered after it with the older list.
        on_collection,
        collection,
        [docs, doc_pick],
        show_progress="hidden",
    )
    delete.click(on_delete, [doc_pick, collection], [upload_status, docs, doc_pick])
    collection.change(on_collection, collection, [docs, doc_pick], show_progress="hidden")
    model.change(on_model, model, [note, top_k], show_progress="hidden")
    # Opening the tab again shows models loaded and documents added since.
    tab.select(refresh, [collection, model], outputs, show_progress="hidden")

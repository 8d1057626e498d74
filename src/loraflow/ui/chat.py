"""The Chat tab: plain chat (no retrieval) with the base model, any adapter, an assistant or
the remote engine; and Compare: one prompt to the base and up to three adapters, side by side."""

from __future__ import annotations

import html
import time
from collections.abc import Iterator
from typing import Any

import gradio as gr

from loraflow.engines import remote as remote_engine
from loraflow.services.catalog import names as catalog
from loraflow.services.runtime import Runtime
from loraflow.services.serve.chat import ChatRequest, chat_stream
from loraflow.services.serve.compare import MAX_ADAPTERS, CompareAnswer, CompareRequest, compare
from loraflow.ui.context import UIContext, action, failure, whole

# How often a streamed answer is redrawn while it is generated (seconds).
STREAM_REFRESH_S = 0.15


def chat_choices(ctx: UIContext, rt: Runtime) -> list[tuple[str, str]]:
    """(label, model name) for every model a chat can name: the base model, each adapter
    (marked when it is attached on first use), each assistant, and the remote engine's
    model (marked when its server does not answer now)."""
    t = ctx.t
    listed = catalog.entries(rt, remote_models=False)
    out = [(t("model_base"), catalog.base_model_id(rt))]
    out += [
        (f"LoRA: {e.name}" + ("" if e.attached else f" ({t('model_not_attached')})"), e.name)
        for e in listed
        if e.kind == "adapter"
    ]
    out += [(e.name, e.name) for e in listed if e.kind == "assistant"]
    remote_name = remote_engine.MODEL_PREFIX + rt.remote.model
    up = rt.remote.health().ok
    label = f"{t('remote_engine')}: {remote_name}" + ("" if up else f" ({t('unreachable')})")
    out.append((label, remote_name))
    return out


def adapter_choices(rt: Runtime) -> list[str]:
    """The adapters Compare can set beside the base model."""
    return [e.name for e in catalog.entries(rt, remote_models=False) if e.kind == "adapter"]


def compare_html(ctx: UIContext, answers: list[CompareAnswer]) -> str:
    """The answers as cards side by side: model, text, time and tokens (or the error)."""
    t = ctx.t
    cards = []
    for a in answers:
        head = t("model_base") if a.kind == "base" else f"LoRA: {a.model}"
        if a.error:
            body = f'<p class="lf-failed">✗ {html.escape(a.error)}</p>'
            foot = ""
        else:
            body = f'<div class="lf-answer">{html.escape(a.text.strip()) or "—"}</div>'
            foot = (
                f'<p class="lf-meta">{a.seconds:.1f} s · {a.completion_tokens} '
                f"{t('tokens')} · {html.escape(str(a.finish_reason))}</p>"
            )
        cards.append(
            f'<div class="lf-card" data-model="{html.escape(a.model)}">'
            f"<h4>{html.escape(head)}</h4>{body}{foot}</div>"
        )
    return f'<div class="lf-compare">{"".join(cards)}</div>'


def build(ctx: UIContext, demo: gr.Blocks, tab: gr.Tab) -> None:
    """Lay out the Chat tab and wire its events (call inside a gr.Tab)."""
    t = ctx.t
    with gr.Row():
        model = gr.Dropdown(label=t("model"), elem_id="chat-model", scale=3)
        max_tokens = gr.Number(
            label=t("max_tokens"),
            value=min(ctx.settings.max_new_tokens, 256),
            precision=0,
            minimum=1,
            maximum=4096,
            elem_id="chat-max-tokens",
            scale=1,
        )
    chatbot = gr.Chatbot(label=t("tab_chat"), elem_id="chat-chat", height=380)
    with gr.Row():
        message = gr.Textbox(
            label=t("message"), placeholder=t("message_hint"), elem_id="chat-message", scale=5
        )
        send = gr.Button(t("send"), variant="primary", elem_id="chat-send", scale=1)
    with gr.Row():
        chat_status = gr.Markdown(elem_id="chat-status")
        clear = gr.Button(t("new_chat"), size="sm", elem_id="chat-clear", scale=0)

    gr.Markdown(f"### {t('compare_title')}\n{t('compare_intro')}")
    with gr.Row():
        prompt = gr.Textbox(label=t("prompt"), elem_id="compare-prompt", lines=2, scale=4)
        adapters = gr.Dropdown(
            label=t("compare_adapters").format(n=MAX_ADAPTERS),
            multiselect=True,
            max_choices=MAX_ADAPTERS,
            elem_id="compare-adapters",
            scale=3,
        )
    with gr.Row():
        with_base = gr.Checkbox(value=True, label=t("compare_with_base"), elem_id="compare-base")
        run = gr.Button(t("compare"), variant="primary", elem_id="compare-run")
    compare_status = gr.Markdown(elem_id="compare-status")
    answers = gr.HTML(elem_id="compare-answers")

    @action
    def refresh(current: str | None, picked: list[str] | None) -> tuple[Any, ...]:
        rt = ctx.rt()
        choices = chat_choices(ctx, rt)
        values = [v for _, v in choices]
        names = adapter_choices(rt)
        kept = [a for a in picked or [] if a in names]
        return (
            gr.update(choices=choices, value=current if current in values else values[0]),
            gr.update(choices=names, value=kept),
        )

    def on_send(
        text: str, name: str | None, limit: float | None, history: list[dict[str, Any]] | None
    ) -> Iterator[tuple[Any, ...]]:
        past = [{"role": m["role"], "content": str(m["content"])} for m in history or []]
        if not (text or "").strip():
            yield past, text, f"✗ {t('empty_message')}"
            return
        pending = [*past, {"role": "user", "content": text}]
        yield [*pending, {"role": "assistant", "content": f"_{t('answering')}_"}], "", ""
        reply, shown, started = "", time.monotonic(), time.monotonic()
        try:
            stream = chat_stream(
                ctx.rt(), ChatRequest(model=name or "", messages=pending, max_tokens=whole(limit))
            )
            try:
                for event in stream.events:
                    if event.text is None:
                        continue
                    reply += event.text
                    if time.monotonic() - shown >= STREAM_REFRESH_S:
                        shown = time.monotonic()
                        yield [*pending, {"role": "assistant", "content": reply + " ▍"}], "", ""
            finally:
                stream.close()
        except Exception as exc:  # said in the form's status line, the chat stays as it was
            heading = t("action_failed").format(action=t("send"))
            yield past, text, f"✗ **{heading}**: {failure(exc)}"
            return
        tokens = stream.usage.get("completion_tokens", 0)
        note = f"{name} · {time.monotonic() - started:.1f} s · {tokens} {t('tokens')}"
        yield [*pending, {"role": "assistant", "content": reply.strip()}], "", f"_{note}_"

    @ctx.in_status(compare_status, "compare")
    def on_compare(
        text: str, picked: list[str] | None, base: bool, limit: float | None
    ) -> dict[Any, Any]:
        if not (text or "").strip():
            raise gr.Error(t("empty_message"))
        req = CompareRequest(
            messages=[{"role": "user", "content": text}],
            adapters=list(picked or []),
            include_base=bool(base),
            max_tokens=whole(limit),
        )
        done = compare(ctx.rt(), req)
        wall = max((a.seconds for a in done), default=0.0)
        said = t("compare_done").format(n=len(done), seconds=f"{wall:.1f}")
        return {compare_status: said, answers: compare_html(ctx, done)}

    shown = [model, adapters]
    demo.load(refresh, [model, adapters], shown, show_progress="hidden")
    tab.select(refresh, [model, adapters], shown, show_progress="hidden")
    sent_in = [message, model, max_tokens, chatbot]
    sent_out = [chatbot, message, chat_status]
    send.click(on_send, sent_in, sent_out, api_name="chat", concurrency_limit=8)
    message.submit(on_send, sent_in, sent_out, concurrency_limit=8)
    clear.click(lambda: ([], ""), None, [chatbot, chat_status])
    run.click(
        on_compare,
        [prompt, adapters, with_base, max_tokens],
        [compare_status, answers],
        api_name="compare",
        concurrency_limit=4,
    )

"""The Create tab: story generation, streamed, with story memory and its report."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr

from loraflow.services.runtime import Runtime
from loraflow.services.write import memory
from loraflow.services.write.writing import WriteRequest, write_stream
from loraflow.ui.context import (
    UIContext,
    action,
    cell,
    model_choices,
    model_request,
    optional_whole,
    parse_stops,
    project_choices,
    whole,
)


def memory_markdown(ctx: UIContext, report: dict[str, Any] | None) -> str:
    """The entries a generation used and the ones dropped for the token budget."""
    t = ctx.t
    if report is None:
        return f"_{t('memory_not_used')}_"

    def table(rows: list[dict[str, Any]]) -> list[str]:
        out = [
            f"| {t('kind')} | {t('title')} | {t('reason')} | {t('tokens').capitalize()} |",
            "|---|---|---|---|",
        ]
        for c in rows:
            why = c["reason"] + (f" ({cell(', '.join(c['matched']), 40)})" if c["matched"] else "")
            out.append(f"| {c['kind']} | {cell(c['title'], 60)} | {why} | {c['tokens']} |")
        return out

    lines = [f"**{t('memory_used')}** ({report['tokens_used']} / {report['budget']} {t('tokens')})"]
    lines += table(report["used"]) if report["used"] else [f"_{t('none')}_"]
    if report["dropped"]:
        lines += ["", f"**{t('memory_dropped')}**", *table(report["dropped"])]
    return "\n".join(lines)


def after_markdown(ctx: UIContext, done: dict[str, Any]) -> str:
    """Suggestions and continuity flags found in the generated text."""
    t = ctx.t
    lines: list[str] = []
    if done.get("suggestions"):
        lines.append(f"**{t('new_suggestions')}** ({t('review_in_memory')})")
        lines += [f"- {s['kind']}: {cell(s['title'], 60)}" for s in done["suggestions"]]
    if done.get("continuity"):
        lines.append(f"**{t('continuity_flags')}**")
        lines += [f"- {cell(f['message'], 200)}" for f in done["continuity"]]
    usage = done.get("usage") or {}
    lines.append(
        f"_{t('answered_by')} {done['model_used']} · {usage.get('completion_tokens', 0)} "
        f"{t('tokens')} · {done['processing_time']:.1f} s_"
    )
    return "\n".join(lines)


def build(ctx: UIContext, demo: gr.Blocks, tab: gr.Tab) -> None:
    """Lay out the Create tab and wire its events (call inside a gr.Tab)."""
    t, s = ctx.t, ctx.settings
    with gr.Row():
        project = gr.Dropdown(label=t("project"), elem_id="create-project", scale=2)
        mode = gr.Radio(
            [(t("mode_prompt"), "prompt"), (t("mode_continue"), "continue")],
            value="prompt",
            label=t("mode"),
            scale=2,
        )
        model = gr.Dropdown(label=t("model"), elem_id="create-model", scale=2)
    prompt = gr.Textbox(label=t("prompt"), lines=4, elem_id="create-prompt")
    with gr.Row():
        use_memory = gr.Checkbox(value=True, label=t("use_memory"), elem_id="create-use-memory")
        save = gr.Checkbox(value=True, label=t("save_to_story"))
    with gr.Accordion(t("parameters"), open=False):
        with gr.Row():
            temperature = gr.Slider(
                0.0, 2.0, value=s.temperature, step=0.05, label=t("temperature")
            )
            top_p = gr.Slider(0.05, 1.0, value=s.top_p, step=0.05, label="top-p")
            top_k = gr.Slider(0, 200, value=s.top_k, step=1, label="top-k")
        with gr.Row():
            max_tokens = gr.Number(
                value=s.max_new_tokens,
                precision=0,
                minimum=1,
                label=t("max_tokens"),
                elem_id="create-max-tokens",
            )
            repetition = gr.Slider(
                1.0,
                2.0,
                value=ctx.settings.repetition_penalty,
                step=0.05,
                label=t("repetition_penalty"),
            )
            seed = gr.Textbox(label=t("seed"), placeholder=t("optional"))
            budget = gr.Number(
                value=s.memory_token_budget, precision=0, minimum=0, label=t("memory_budget")
            )
        stops = gr.Textbox(label=t("stop_strings"), lines=2, placeholder=t("one_per_line"))
    with gr.Row():
        go = gr.Button(t("generate"), variant="primary", elem_id="create-go")
        stop = gr.Button(t("stop"), variant="stop", elem_id="create-stop")
    output = gr.Textbox(label=t("generated_text"), lines=10, elem_id="create-output")
    memory_md = gr.Markdown(elem_id="create-memory")
    after_md = gr.Markdown(elem_id="create-after")
    with gr.Accordion(t("story_so_far"), open=False):
        story = gr.Textbox(label=t("story"), lines=12, interactive=False, elem_id="create-story")
        clear_story = gr.Button(t("clear_story"), size="sm", variant="stop")

    def _story(rt: Runtime, ref: str | None) -> str:
        return memory.get_story(rt, ref)["text"] if ref else ""

    @action
    def refresh(ref: str | None, current_model: str | None) -> tuple[Any, Any, str]:
        rt = ctx.rt()
        projects = project_choices(rt)
        ids = [pid for _, pid in projects]
        # "" is a writer's explicit "no project"; nothing chosen yet picks the first project.
        if ref != "" and ref not in ids:
            ref = ids[0] if ids else None
        models = model_choices(ctx, rt)
        values = [v for _, v in models]
        picked = current_model if current_model in values else values[0]
        return (
            gr.update(choices=[(t("no_project"), ""), *projects], value=ref),
            gr.update(choices=models, value=picked),
            _story(rt, ref),
        )

    @ctx.in_status(after_md, "generate")
    def on_generate(
        ref: str | None,
        how: str,
        text: str,
        memory_on: bool,
        keep: bool,
        choice: str | None,
        temp: float,
        p: float,
        k: float,
        most: float | None,
        penalty: float,
        seed_value: str | None,
        limit: float | None,
        stop_text: str,
    ) -> Iterator[tuple[str, str, str, Any]]:
        rt = ctx.rt()
        req = WriteRequest(
            prompt=text or "",
            mode="continue" if how == "continue" else "prompt",
            project=ref or None,
            use_memory=bool(memory_on),
            max_tokens=whole(most),
            temperature=float(temp),
            top_p=float(p),
            top_k=whole(k),
            repetition_penalty=float(penalty),
            stop=parse_stops(stop_text),
            seed=optional_whole(seed_value, t("seed")),
            memory_budget=whole(limit),
            save=bool(keep),
            **model_request(choice),
        )
        stream = write_stream(rt, req)
        parts: list[str] = []
        used = ""
        try:
            for event in stream.events:
                if event["type"] == "memory":
                    used = memory_markdown(ctx, event["memory"])
                    yield "", used, f"_{t('generating')}_", gr.update()
                elif event["type"] == "text":
                    parts.append(event["text"])
                    yield "".join(parts), used, f"_{t('generating')}_", gr.update()
                elif event["type"] == "done":
                    yield event["text"], used, after_markdown(ctx, event), _story(rt, ref)
        finally:
            # Also reached when the page stops the event: the engine stops decoding.
            stream.close()

    @action
    def on_project(ref: str | None) -> str:
        return _story(ctx.rt(), ref)

    @ctx.in_status(after_md, "clear_story")
    def on_clear_story(ref: str | None) -> tuple[str, str]:
        if not ref:
            raise gr.Error(t("pick_project"))
        memory.delete_story(ctx.rt(), ref)
        return "", ""

    inputs = [project, model]
    demo.load(refresh, inputs, [project, model, story], show_progress="hidden")
    tab.select(refresh, inputs, [project, model, story], show_progress="hidden")
    event = go.click(
        on_generate,
        [
            project,
            mode,
            prompt,
            use_memory,
            save,
            model,
            temperature,
            top_p,
            top_k,
            max_tokens,
            repetition,
            seed,
            budget,
            stops,
        ],
        [output, memory_md, after_md, story],
        api_name="write",
        concurrency_limit=8,
    )
    stop.click(None, None, None, cancels=[event])
    project.change(on_project, project, story, show_progress="hidden")
    clear_story.click(on_clear_story, project, [story, after_md])

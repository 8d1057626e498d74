"""The Training tab: dataset upload, job parameters, and a live task list with loss curves."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd
from gradio.components.plot import AltairPlotData

from loraflow.datasets.formats import DATASET_TYPES
from loraflow.services.runtime import Runtime
from loraflow.services.train import datasets
from loraflow.services.train import jobs as training
from loraflow.training.params import PARAMS, Param
from loraflow.ui.context import UIContext, action, cell, decimal, failure, whole

# How often the task list and loss curve are re-read while the page is open (seconds).
POLL_SECONDS = 2.0
DATASET_SUFFIXES = [".json", ".jsonl", ".txt"]
SERIES = ("loss", "loss (smoothed)", "eval_loss")
# Weight of the newest step in the smoothed training loss (an exponential moving average).
SMOOTHING = 0.3


def tasks_html(ctx: UIContext, tasks: list[dict[str, Any]]) -> str:
    """The task list as a table with a progress bar per task."""
    t = ctx.t
    if not tasks:
        return f"<p class='lf-empty'>{html.escape(t('no_tasks'))}</p>"
    head = ["#", t("task"), t("status"), t("progress"), t("epoch"), t("step"), t("loss")]
    head += [t("created"), t("message")]
    rows = ["<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for task in tasks:
        pct = float(task["progress"] or 0.0)
        step = f"{task['step'] or 0}/{task['total_steps'] or '?'}"
        loss = "" if task["loss"] is None else f"{task['loss']:.4f}"
        epoch = "" if task["current_epoch"] is None else f"{task['current_epoch']:g}"
        message = task["error"] or task["message"] or ""
        status = task["status"]
        cells = [
            str(task["task_id"]),
            html.escape(task["task_name"]),
            f"<span class='lf-status lf-{html.escape(status)}'>"
            f"{html.escape(t('status_' + status) if t.has('status_' + status) else status)}</span>",
            f"<div class='lf-bar'><div style='width:{pct:.1f}%'></div></div>"
            f"<span class='lf-pct'>{pct:.1f}%</span>",
            epoch,
            step,
            loss,
            html.escape((task["created_at"] or "")[:19].replace("T", " ")),
            html.escape(cell(message, 160))
            + (
                f"<div class='lf-meta lf-where'>{html.escape(where)}</div>"
                if task.get("executor") == "ray" and (where := training.placement(task))
                else ""
            ),
        ]
        rows.append(
            f"<tr data-task='{task['task_id']}' data-status='{html.escape(status)}'>"
            + "".join(f"<td>{c}</td>" for c in cells)
            + "</tr>"
        )
    return f"<table class='lf-tasks'>{''.join(rows)}</table>"


def loss_frame(
    rt: Runtime, task_id: int | None, names: dict[str, str] | None = None
) -> pd.DataFrame:
    """Training and eval loss of one task as a long table: step, value, series."""
    points: list[dict[str, Any]] = []
    if task_id is not None:
        curve = training.metrics(rt, task_id)
        for name in ("loss", "eval_loss"):
            points += [
                {"step": h["step"], "value": h[name], "series": name}
                for h in curve[name]
                if h.get("step") is not None
            ]
        points += smoothed(
            [(h["step"], h["loss"]) for h in curve["loss"] if h.get("step") is not None]
        )
    frame = pd.DataFrame(points, columns=["step", "value", "series"])
    if names:  # the legend in the page's language
        frame["series"] = frame["series"].map(lambda key: names.get(key, key))
    return frame.astype({"step": "float64", "value": "float64", "series": "str"})


def loss_chart(frame: pd.DataFrame, axes: dict[str, Any]) -> AltairPlotData:
    """The loss curve as a Vega-Lite line chart: whole steps on the x axis (a run of a few
    steps would otherwise get ticks at 1.5), every series in the legend from the start."""
    # Finite points only: a diverged run can log an infinite loss, which JSON cannot carry.
    numbers = frame.astype({"step": "float64", "value": "float64"})
    rows = numbers[np.isfinite(numbers["step"]) & np.isfinite(numbers["value"])]
    steps = [int(s) for s in rows["step"]]
    values = [
        {"step": step, "value": float(value), "series": str(name)}
        for step, value, name in zip(steps, rows["value"], rows["series"], strict=True)
    ]
    series = list(axes["series"])
    # The page's theme swaps these colours for its own palette, one colour a series.
    palette = ["#f97316", "#3b82f6", "#22c55e"]
    color = {
        "field": "series",
        "type": "nominal",
        "title": None,
        "scale": {"domain": series, "range": palette[: len(series)]},
        "legend": {"orient": "bottom"},
    }
    axis: dict[str, Any] = {"tickMinStep": 1, "format": "d"}
    if steps and max(steps) - min(steps) <= 10:
        # tickMinStep alone still puts a tick at 1.5 over a domain of 1-2 or 1-3: name them.
        axis["values"] = list(range(min(steps), max(steps) + 1))
    x = {
        "field": "step",
        "type": "quantitative",
        "title": axes["x"],
        "scale": {"zero": False},
        "axis": axis,
    }
    y = {"field": "value", "type": "quantitative", "title": axes["y"], "scale": {"zero": False}}
    tooltip = [
        {"field": "series", "type": "nominal"},
        {"field": "step", "type": "quantitative"},
        {"field": "value", "type": "quantitative", "format": ".4f"},
    ]
    spec = {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": axes["title"],
        "height": 300,
        "data": {"values": values},
        # SVG, so the page (and its tests) can read the drawn lines and labels.
        "usermeta": {"embedOptions": {"renderer": "svg"}},
        "layer": [
            {"mark": {"type": "line"}, "encoding": {"x": x, "y": y, "color": color}},
            {
                "mark": {"type": "point", "filled": True, "size": 16, "strokeWidth": 0},
                "encoding": {"x": x, "y": y, "color": color, "tooltip": tooltip},
            },
        ],
    }
    return AltairPlotData(chart="line", plot=json.dumps(spec, allow_nan=False))


def smoothed(losses: list[tuple[int, float]]) -> list[dict[str, Any]]:
    """The training loss as an exponential moving average: per-step losses jump with each
    batch's examples, the average shows the trend."""
    out, level = [], None
    for step, value in losses:
        if value is None or not math.isfinite(value):
            continue  # one diverged step would otherwise carry into every later point
        level = value if level is None else SMOOTHING * value + (1 - SMOOTHING) * level
        out.append({"step": step, "value": level, "series": "loss (smoothed)"})
    return out


def preview_html(ctx: UIContext, shown: dict[str, Any]) -> str:
    """A dataset preview: the first rows as the model reads them (trained tokens marked),
    a histogram of lengths in tokens, and how many rows max_len cuts."""
    t = ctx.t
    parts = [f"<div class='lf-preview'><h4>{html.escape(t('preview_title'))}</h4>"]
    for row in shown["rows"]:
        text = "".join(
            f"<mark>{html.escape(seg['text'])}</mark>"
            if seg["trained"]
            else html.escape(seg["text"])
            for seg in row["segments"]
        )
        cut = f" · {t('preview_cut')}" if row["cut"] else ""
        parts.append(
            f"<pre class='lf-row'>{text}</pre><p class='lf-meta'>{row['tokens']} "
            f"{t('tokens')} · {row['trained_tokens']} {t('preview_trained')}{cut}</p>"
        )
    bins = shown["histogram"]
    top = max((b["count"] for b in bins), default=0) or 1
    bars = []
    for b in bins:
        span = f"{b['from']}–{b['to']}" if b["to"] is not None else f"> {shown['max_len']}"
        width = 100.0 * b["count"] / top
        bars.append(
            f"<tr><td>{span}</td><td><div class='lf-bar'><div style='width:{width:.0f}%'></div>"
            f"</div></td><td>{b['count']}</td></tr>"
        )
    over = int(shown["tokens"].get("over_max_len", 0))
    parts.append(
        f"<p>{html.escape(t('preview_lengths'))}</p><table class='lf-hist'>{''.join(bars)}</table>"
        f"<p class='lf-over'>"
        + html.escape(
            t("preview_over").format(over=over, total=shown["sequences"], max_len=shown["max_len"])
        )
        + "</p></div>"
    )
    return "".join(parts)


def followed_line(ctx: UIContext, tasks: list[dict[str, Any]], task_id: int | None) -> str:
    """The status line under Start for the task the page last started, cancelled or resumed:
    its state now, so it never says "queued" or "cancelling" after the job moved on."""
    task = next((x for x in tasks if x["task_id"] == task_id), None)
    if task is None:
        return ""
    t, status = ctx.t, task["status"]
    label = t("status_" + status) if t.has("status_" + status) else status
    mark = {"completed": "✓ ", "failed": "✗ "}.get(status, "")
    detail = task["error"] or task["message"] or ""
    if task.get("executor") == "ray" and (where := training.placement(task)):
        detail += f" ({where})"
    return f"{mark}#{task_id} {task['task_name']}: **{label}**" + (f" — {detail}" if detail else "")


# The training parameters of the form (rendered from PARAMS), row by row.
FORM_ROWS = (
    ("method", "beta"),
    ("rank", "alpha", "dropout"),
    ("epochs", "batch_size", "grad_accum"),
    ("lr", "max_len", "max_steps"),
    ("target_modules", "device", "quantization", "val_split"),
)
FORM_PARAMS = tuple(name for row in FORM_ROWS for name in row)


def _field(t: Any, p: Param) -> gr.components.Component:
    """A training parameter's field, showing its default (the SPEC B preset)."""
    assert p.ui is not None, f"{p.name} has no UI field"
    ui = p.ui
    label = t(ui.label) if t.has(ui.label) else ui.label
    if p.choices and ui.unset is not None:
        choices: list[Any] = [(t(ui.unset), ""), *(ui.choices or p.choices)]
        return gr.Dropdown(choices, value="", label=label, elem_id=ui.elem_id)
    if p.choices or p.presets:
        return gr.Dropdown(
            list(ui.choices or p.choices or p.presets),
            value=p.default,
            allow_custom_value=bool(p.presets),
            label=label,
            elem_id=ui.elem_id,
        )
    return gr.Number(
        p.default,
        precision=0 if p.kind is int else None,
        minimum=ui.minimum,
        maximum=ui.maximum,
        label=label,
        elem_id=ui.elem_id,
    )


def _task_choices(tasks: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(f"#{x['task_id']} {x['task_name']}", x["task_id"]) for x in tasks]


def build(ctx: UIContext, demo: gr.Blocks, tab: gr.Tab) -> None:
    """Lay out the Training tab and wire its events (call inside a gr.Tab)."""
    t = ctx.t
    with gr.Row():
        with gr.Column():
            gr.Markdown(f"### {t('dataset')}")
            file = gr.File(
                label=t("dataset_file"),
                file_types=DATASET_SUFFIXES,
                type="filepath",
                elem_id="train-file",
            )
            kind = gr.Radio(
                list(DATASET_TYPES), value="alpaca", label=t("format"), elem_id="train-format"
            )
            upload = gr.Button(t("upload_validate"), elem_id="train-upload")
            upload_status = gr.Markdown(elem_id="train-upload-status")
            dataset = gr.Textbox(
                label=t("uploaded_dataset"), interactive=False, elem_id="train-dataset"
            )
            preview = gr.HTML(elem_id="train-preview")
        with gr.Column():
            gr.Markdown(f"### {t('job')}")
            base = gr.Dropdown(label=t("base_model"), elem_id="train-base-model")
            name = gr.Textbox(label=t("task_name"), elem_id="train-name")
            with gr.Accordion(t("parameters"), open=True):
                fields: list[gr.components.Component] = []
                for row in FORM_ROWS:
                    with gr.Row():
                        fields += [_field(t, PARAMS[name]) for name in row]
            start = gr.Button(t("start"), variant="primary", elem_id="train-start")
            start_status = gr.Markdown(elem_id="train-start-status")
    gr.Markdown(f"### {t('tasks')}")
    tasks = gr.HTML(elem_id="train-tasks")
    with gr.Row():
        pick = gr.Dropdown(label=t("task"), elem_id="train-task", scale=3)
        cancel = gr.Button(t("cancel"), variant="stop", elem_id="train-cancel", scale=1)
        resume = gr.Button(t("resume"), elem_id="train-resume", scale=1)
    plot = gr.Plot(label=t("loss_curve"), show_label=False, elem_id="train-loss")
    gr.Markdown(t("loss_note"), elem_id="train-loss-note")
    # What this page shows now; a poll re-sends only what changed, so the dropdown stays open
    # and the plot does not flicker.
    legend = {name: t("series_" + name.replace(" (smoothed)", "_smoothed")) for name in SERIES}
    axes = {
        "title": t("loss_curve"),
        "x": t("step"),
        "y": t("loss"),
        "series": list(legend.values()),
    }
    shown = gr.State({})
    # The task the status line under Start speaks of; the poll keeps that line current.
    followed = gr.State(None)
    timer = gr.Timer(POLL_SECONDS)

    @action
    def refresh(
        selected: int | None, seen: dict[str, Any], task_id: int | None = None
    ) -> tuple[Any, ...]:
        rt = ctx.rt()
        found = training.list_tasks(rt)
        valid = {x["task_id"] for x in found}
        chosen = selected if selected in valid else (found[0]["task_id"] if found else None)
        table = tasks_html(ctx, found)
        frame = loss_frame(rt, chosen, legend)
        now = {
            "ids": [x["task_id"] for x in found],
            "table": table,
            "plot": f"{chosen}:{len(frame)}:{frame['value'].sum()}",
            "line": followed_line(ctx, found, task_id),
        }
        same = {k: (seen or {}).get(k) == v for k, v in now.items()}
        menu = (
            gr.update()
            if same["ids"] and chosen == selected
            else gr.update(choices=_task_choices(found), value=chosen)
        )
        return (
            gr.update() if same["table"] else table,
            menu,
            gr.update() if same["plot"] else loss_chart(frame, axes),
            now,
            gr.update() if same["line"] or not now["line"] else now["line"],
        )

    @action
    def load(selected: int | None, seen: dict[str, Any]) -> tuple[Any, ...]:
        rt = ctx.rt()
        models = [m["name"] for m in datasets.available_models(rt)]
        value = "bundled:smollm2" if "bundled:smollm2" in models else (models or [None])[0]
        return (gr.update(choices=models, value=value), *refresh(selected, seen))

    @ctx.in_status(upload_status, "upload_validate")
    def on_upload(path: str | None, dataset_type: str, progress=gr.Progress()) -> tuple[str, str]:
        if not path:
            raise gr.Error(t("no_file_chosen"))
        progress(None, desc=t("validating"))
        with open(path, "rb") as stream:
            info = datasets.save_dataset_upload(ctx.rt(), Path(path).name, stream, dataset_type)
        return f"✓ {info['message']} ({info['size_mb']} MB)", info["filename"]

    def on_preview(stored: str, dataset_type: str, base_model: str | None, limit: Any) -> str:
        """The preview of the dataset just uploaded, or why there is none (never an error:
        the upload itself succeeded)."""
        if not stored:
            return ""
        try:
            shown = datasets.preview_dataset(
                ctx.rt(),
                stored,
                dataset_type,
                base_model=base_model or None,
                max_len=whole(limit) or 512,
            )
        except Exception as exc:
            why = f"{t('no_preview')}: {failure(exc)}"
            return f"<p class='lf-meta'>{html.escape(why)}</p>"
        return preview_html(ctx, shown)

    @ctx.in_status(start_status, "start")
    def on_start(
        stored: str,
        dataset_type: str,
        base_model: str | None,
        task_name: str,
        *values: Any,
    ) -> tuple[Any, ...]:
        rt = ctx.rt()
        if not stored:
            raise gr.Error(t("upload_first"))
        if not base_model:
            raise gr.Error(t("pick_base_model"))
        params: dict[str, Any] = {}
        for name, value in zip(FORM_PARAMS, values, strict=True):
            p = PARAMS[name]
            if p.ui is not None and p.ui.unset is not None and not value:
                # Empty: not set (the device: the service's TRAINING_DEVICE, DEVICE when unset,
                # else auto).
                continue
            convert = {int: whole, float: decimal}.get(p.kind)
            params[name] = convert(value) if convert else value
        task = training.submit(rt, task_name, base_model, stored, dataset_type, params)
        message = f"{t('queued')}: #{task['task_id']} {task['task_name']} → {task['output_path']}"
        found = training.list_tasks(rt)
        menu = gr.update(choices=_task_choices(found), value=task["task_id"])
        return message, tasks_html(ctx, found), menu, task["task_id"]

    def on_task(
        do: Callable[[Runtime, int], dict[str, Any]], button: str
    ) -> Callable[..., tuple[Any, ...]]:
        """A button handler that applies `do` (cancel, resume) to the picked task."""

        @ctx.in_status(start_status, button)
        def handler(task_id: int | None) -> tuple[Any, ...]:
            rt = ctx.rt()
            if task_id is None:
                raise gr.Error(t("pick_task"))
            task = do(rt, int(task_id))
            message = f"#{task['task_id']}: {task['message']}"
            return message, tasks_html(ctx, training.list_tasks(rt)), task["task_id"]

        return handler

    live = [tasks, pick, plot, shown, start_status]
    watched = [pick, shown, followed]
    demo.load(load, [pick, shown], [base, *live], show_progress="hidden")
    tab.select(refresh, watched, live, show_progress="hidden")
    timer.tick(refresh, watched, live, show_progress="hidden")
    max_len_field = fields[FORM_PARAMS.index("max_len")]
    upload.click(on_upload, [file, kind], [upload_status, dataset], api_name="upload_dataset").then(
        on_preview, [dataset, kind, base, max_len_field], preview, show_progress="hidden"
    )
    start.click(
        on_start,
        [dataset, kind, base, name, *fields],
        [start_status, tasks, pick, followed],
        api_name="train",
    )
    acted = [start_status, tasks, followed]
    cancel.click(on_task(training.cancel, "cancel"), pick, acted)
    resume.click(on_task(training.resume, "resume"), pick, acted)
    pick.input(refresh, watched, live, show_progress="hidden")

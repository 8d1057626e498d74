"""Models tab sections for the adapter registry: list and scan, merge, validate, export.

Each section is a function of the tab's parts (see loraflow.ui.parts). Merge, validation and
export run as workflows in the service; a gr.Timer polls the one a section started and shows
its steps with progress bars until it ends.
"""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

from loraflow.adapters.merge.registry import METHODS
from loraflow.errors import InvalidInput, LoraflowError
from loraflow.services.manage import workflows
from loraflow.services.registry import adapters as adapter_svc
from loraflow.services.runtime import Runtime
from loraflow.ui.context import action, cell
from loraflow.ui.i18n import Labels
from loraflow.ui.parts import TabParts, bump, refresh_on

# How often a running workflow is re-read (seconds).
POLL_SECONDS = 1.5
MODES = ("quick", "standard", "comprehensive")


# --- shared pieces ---------------------------------------------------------------------------
def numbers(text: Any, what: str) -> list[float] | None:
    """Numbers typed as "0.7, 0.3" (commas or spaces); empty means not set."""
    raw = "" if text is None else str(text).replace(",", " ").split()
    if not raw:
        return None
    try:
        return [float(x) for x in raw]
    except ValueError:
        raise InvalidInput(
            f"{what} {str(text)!r} must be numbers separated by commas, e.g. 0.7, 0.3"
        ) from None


def number(text: Any, what: str) -> float | None:
    """One number typed into a text field; empty means not set."""
    found = numbers(text, what)
    if found is not None and len(found) != 1:
        raise InvalidInput(f"{what} {str(text)!r} must be one number")
    return found[0] if found else None


def adapter_refs(rt: Runtime) -> list[str]:
    """Registered adapters whose files are there, as name@vN."""
    return [r.ref for r in adapter_svc.list_adapters(rt) if r.status != "missing"]


def kept(current: Any, choices: list[str]) -> Any:
    """A dropdown's value after its choices were re-read: what is still offered stays."""
    if isinstance(current, list):
        return [c for c in current if c in choices]
    return current if current in choices else None


def adapter_menu(parts: TabParts) -> Any:
    """A handler re-reading an adapter dropdown's choices (one or several picked)."""

    @action
    def refresh(current: str | list[str] | None) -> Any:
        refs = adapter_refs(parts.ctx.rt())
        return gr.update(choices=refs, value=kept(current, refs))

    return refresh


def status_label(t: Labels, status: str) -> str:
    key = f"status_{status}"
    return t(key) if t.has(key) else status


def grade_label(t: Labels, grade: str) -> str:
    key = f"grade_{grade}"
    return t(key) if t.has(key) else grade


def workflow_html(t: Labels, wf: dict[str, Any]) -> str:
    """A workflow's steps with a progress bar each, its status and its error."""
    status = str(wf["status"])
    head = [t("step"), t("status"), t("progress"), t("message")]
    rows = ["<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for step in wf.get("steps") or []:
        state = str(step.get("status", "pending"))
        pct = 100.0 if state == "completed" else float(step.get("progress") or 0.0) * 100
        cells = [
            html.escape(str(step["step"])),
            f"<span class='lf-status lf-{html.escape(state)}'>"
            f"{html.escape(status_label(t, state))}</span>",
            f"<div class='lf-bar'><div style='width:{pct:.0f}%'></div></div>"
            f"<span class='lf-pct'>{pct:.0f}%</span>",
            html.escape(cell(step.get("error") or step.get("message") or "", 160)),
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    error = wf.get("error")
    tail = f"<p class='lf-failed'>{html.escape(str(error))}</p>" if error else ""
    return (
        f"<div class='lf-workflow' data-status='{html.escape(status)}'>"
        f"<p>{html.escape(t('workflow'))} {html.escape(str(wf['id'])[:8])} "
        f"({html.escape(str(wf['kind']))}): <span class='lf-status lf-{html.escape(status)}'>"
        f"{html.escape(status_label(t, status))}</span></p>"
        f"<table class='lf-tasks'>{''.join(rows)}</table>{tail}</div>"
    )


def poll(parts: TabParts, wf_id: str | None) -> tuple[dict[str, Any] | None, Any, Any, Any]:
    """Re-read a started workflow: (record or None, kept id, progress view, timer update)."""
    if not wf_id:
        return None, None, gr.update(), gr.Timer(active=False)
    try:
        wf = workflows.get_workflow(parts.ctx.rt(), wf_id)
    except LoraflowError as exc:  # shown once, in place, rather than a message every tick
        return (
            None,
            None,
            f"<p class='lf-failed'>{html.escape(str(exc))}</p>",
            gr.Timer(active=False),
        )
    if wf["status"] in workflows.FINISHED:
        # The id is dropped, so a tick that was already on its way changes nothing.
        return wf, None, workflow_html(parts.ctx.t, wf), gr.Timer(active=False)
    return wf, wf_id, workflow_html(parts.ctx.t, wf), gr.update()


def started(parts: TabParts, kind: str, spec: dict[str, Any]) -> tuple[str, str, Any]:
    """Start a workflow: (its id, its progress view, the timer switched on)."""
    wf = workflows.start(parts.ctx.rt(), kind, spec)
    return wf["id"], workflow_html(parts.ctx.t, wf), gr.Timer(active=True)


def _md(text: Any) -> str:
    """A value inside a Markdown table cell."""
    return cell(text, 200).replace("|", "\\|")


def score_card(t: Labels, ref: str, report: dict[str, Any], gate: dict[str, Any]) -> str:
    """A validation report as Markdown: one verdict (the quality gate's, with the score and
    grade it was made from, and why not when it failed), then dimensions and advice."""
    score = f"{float(report.get('overall_score', 0.0)):.1f} / 100"
    grade = grade_label(t, str(report.get("grade", "?")))
    passed = bool(gate.get("passed"))
    verdict = f"✓ {t('verdict_ready')}" if passed else f"✗ {t('verdict_blocked')}"
    lines = [
        f"#### {t('score_card')}: {ref} ({t('mode')}: {report.get('mode', '?')})",
        f"**{verdict}** — {t('overall_score')} {score}, {t('grade')}: {grade}",
    ]
    lines += [f"- {reason}" for reason in gate.get("reasons") or []]
    lines += [
        "",
        f"| {t('dimension')} | {t('val_score')} | {t('weight')} | {t('notes')} |",
        "| --- | --- | --- | --- |",
    ]
    for name, dim in (report.get("dimensions") or {}).items():
        score = dim.get("score")
        shown = t("skipped") if score is None else f"{float(score):.1f}"
        weight = f"{float(dim.get('weight', 0.0)) * 100:.0f}%"
        lines.append(f"| {name} | {shown} | {weight} | {_md('; '.join(dim.get('notes') or []))} |")
    tips = report.get("recommendations") or []
    if tips:
        lines += ["", f"**{t('recommendations')}**", *(f"- {tip}" for tip in tips)]
    return "\n".join(lines)


def bench_cell(bench: Any) -> str:
    """`loraflow adapters benchmark`'s result in one cell: tokens/s ratio and p95 latencies."""
    if not isinstance(bench, dict) or not bench.get("tokens_per_s_ratio"):
        return ""
    base, mine = bench["base"], bench["with_adapter"]
    return (
        f"{bench['tokens_per_s_ratio']:.2f}x "
        f"(p95 {mine['latency_p95_ms']:g} / {base['latency_p95_ms']:g} ms)"
    )


# --- sections --------------------------------------------------------------------------------
def registry_section(parts: TabParts) -> None:
    """Registered adapters with their latest validation, and scanning the adapter folders."""
    ctx, t = parts.ctx, parts.ctx.t
    gr.Markdown(f"### {t('registry')}")
    head = [t("name"), t("version"), t("rank"), t("target_modules"), t("source"), t("status")]
    table = gr.Dataframe(
        headers=[*head, t("val_score"), t("grade"), t("bench_ratio")],
        interactive=False,
        elem_id="models-registry",
    )
    scan = gr.Button(t("scan"), elem_id="models-scan")
    status = gr.Markdown(elem_id="models-scan-status")

    @action
    def refresh() -> Any:
        rt = ctx.rt()
        rows = []
        for rec in adapter_svc.list_adapters(rt):
            latest = adapter_svc.latest_validation(rt, rec)
            rows.append(
                [
                    rec.name,
                    str(rec.version),
                    str(rec.rank),
                    ", ".join(rec.target_modules),
                    rec.source,
                    rec.status,
                    "" if latest is None else f"{float(latest['score']):.1f}",
                    "" if latest is None else grade_label(t, str(latest["grade"])),
                    bench_cell(rec.metrics.get("benchmark")),
                ]
            )
        return rows or [[t("no_adapters"), *[""] * 8]]

    @parts.ctx.in_status(status, "scan")
    def on_scan(signal: int | None) -> tuple[str, int]:
        found = adapter_svc.scan(ctx.rt())
        text = t("scan_result").format(
            added=len(found.added),
            changed=len(found.changed),
            missing=len(found.missing),
            unchanged=found.unchanged,
        )
        named = [f"{r.ref}: {t('scan_new')}" for r in found.added]
        named += [f"{r.ref}: {t('scan_changed')}" for r in found.changed]
        named += [f"{r.ref}: {t('scan_missing')}" for r in found.missing]
        named += [f"{path}: {t('skipped')} ({why})" for path, why in found.skipped.items()]
        return "\n".join([text, *(f"- {_md(n)}" for n in named)]), bump(signal)

    refresh_on(parts, refresh, [], [table])
    scan.click(on_scan, [parts.changed], [status, parts.changed], api_name="scan_adapters")


def merge_section(parts: TabParts) -> None:
    """Merge two or more registered adapters into a new one (a workflow, with progress)."""
    t = parts.ctx.t
    gr.Markdown(f"### {t('merge_title')}")
    with gr.Row():
        picked = gr.Dropdown(
            label=t("merge_adapters"), multiselect=True, elem_id="models-merge-adapters", scale=3
        )
        method = gr.Dropdown(
            list(METHODS), value="linear", label=t("merge_method"), elem_id="models-merge-method"
        )
    with gr.Row():
        weights = gr.Textbox(
            label=t("merge_weights"), placeholder=t("merge_weights_hint"), elem_id="models-merge-w"
        )
        density = gr.Textbox(label=t("merge_density"), placeholder=t("merge_density_hint"))
        max_rank = gr.Textbox(
            label=t("merge_max_rank"),
            placeholder=t("merge_max_rank_hint"),
            elem_id="models-merge-max-rank",
        )
        name = gr.Textbox("merged", label=t("merge_name"), elem_id="models-merge-name")
        start = gr.Button(t("start_merge"), variant="primary", elem_id="models-merge-start")
    view = gr.HTML(elem_id="models-merge-progress")
    result = gr.Markdown(elem_id="models-merge-result")
    wf_id, timer = gr.State(None), gr.Timer(POLL_SECONDS, active=False)

    @parts.ctx.in_status(result, "start_merge")
    def on_start(
        refs: list[str] | None, how: str, w: str, d: str, r: str, n: str
    ) -> tuple[Any, ...]:
        if len(refs or []) < 2:
            raise gr.Error(t("pick_two"))
        spec: dict[str, Any] = {"adapters": list(refs or []), "method": how or "linear"}
        spec["name"] = (n or "").strip() or "merged"
        found = numbers(w, "weights")
        if found is not None:
            spec["weights"] = found
        share = number(d, "density")
        if share is not None:
            spec["density"] = share
        cap = number(r, "max rank")
        if cap is not None:
            if cap != int(cap):
                raise InvalidInput(f"max rank {r!r} must be a whole number")
            spec["max_rank"] = int(cap)
        return (*started(parts, "merge", spec), "")

    @action
    def on_tick(current: str | None, signal: int | None) -> tuple[Any, ...]:
        wf, keep, shown, tick = poll(parts, current)
        if wf is None or wf["status"] != "completed":
            return keep, shown, tick, gr.update(), gr.update()
        detail = (wf["steps"][-1].get("detail") or {}) if wf["steps"] else {}
        made = (detail.get("adapter") or {}).get("name", "")
        if detail.get("adapter"):
            made = f"{made}@v{detail['adapter']['version']}"
        text = f"**{t('merged_into')}**: {made} (`{detail.get('output_dir', '')}`)"
        text += merge_checks_text(t, detail)
        return keep, shown, tick, text, bump(signal)

    refresh_on(parts, adapter_menu(parts), [picked], [picked])
    start.click(
        on_start,
        [picked, method, weights, density, max_rank, name],
        [wf_id, view, timer, result],
        api_name="merge_adapters",
    )
    timer.tick(
        on_tick,
        [wf_id, parts.changed],
        [wf_id, view, timer, result, parts.changed],
        show_progress="hidden",
    )


def merge_checks_text(t: Any, detail: dict[str, Any]) -> str:
    """Markdown lines on how exact a merge result is, and its warnings."""
    checks = detail.get("checks") or {}
    lines = []
    factoring = checks.get("factoring") or {}
    if factoring:
        line = f"**{t('merge_factoring')}**: {factoring['how']}, rank {factoring['rank']}"
        if "tolerance" in factoring:
            line += (
                f", {t('merge_worst_error')} {factoring['max_relative_error']:.2e} "
                f"({t('merge_bound')} {factoring['tolerance']:g}, `{factoring['worst_tensor']}`)"
            )
        lines.append(line)
    reference = checks.get("reference")
    if isinstance(reference, dict) and "max_relative_error" in reference:
        lines.append(
            f"**{t('merge_reference')}**: {reference['tensors']} tensors, "
            f"{t('merge_worst_error')} {reference['max_relative_error']:.2e}"
        )
    lines += [f"**{t('merge_warning')}**: {w}" for w in detail.get("warnings") or []]
    return "".join(f"\n\n{line}" for line in lines)


def finished_card(parts: TabParts, wf: dict[str, Any]) -> str:
    """The score card of a completed validation workflow."""
    rt, t = parts.ctx.rt(), parts.ctx.t
    done = wf.get("result") or {}
    gate = (wf["steps"][-1].get("detail") or {}).get("gate")
    try:
        rec = adapter_svc.get_adapter(rt, str(done.get("adapter")))
    except LoraflowError as exc:  # removed meanwhile
        return str(exc)
    rows = adapter_svc.validations(rt, rec.id)
    report = next((r["report"] for r in rows if r["id"] == done.get("validation_id")), None)
    if report is None:
        return t("no_validation")
    return score_card(t, rec.ref, report, gate or adapter_svc.gate_decision(rt.settings, report))


def validate_section(parts: TabParts) -> None:
    """Validate a registered adapter (a workflow, with progress), then show its score card."""
    ctx, t = parts.ctx, parts.ctx.t
    gr.Markdown(f"### {t('validate_title')}")
    with gr.Row():
        pick = gr.Dropdown(label=t("adapter"), elem_id="models-validate-adapter", scale=3)
        mode = gr.Dropdown(list(MODES), value="quick", label=t("mode"), elem_id="models-mode")
        start = gr.Button(t("start_validate"), variant="primary", elem_id="models-validate-start")
    view = gr.HTML(elem_id="models-validate-progress")
    card = gr.Markdown(elem_id="models-validate-card")
    wf_id, timer = gr.State(None), gr.Timer(POLL_SECONDS, active=False)

    @action
    def on_pick(ref: str | None) -> str:
        if not ref:
            return ""
        rt = ctx.rt()
        rec = adapter_svc.get_adapter(rt, ref)
        latest = adapter_svc.latest_validation(rt, rec)
        if latest is None:
            return t("no_validation")
        report = latest["report"]
        return score_card(t, rec.ref, report, adapter_svc.gate_decision(rt.settings, report))

    @parts.ctx.in_status(card, "start_validate")
    def on_start(ref: str | None, how: str) -> tuple[Any, ...]:
        if not ref:
            raise gr.Error(t("pick_adapter"))
        return (*started(parts, "validate", {"adapter": ref, "mode": how or "quick"}), "")

    @action
    def on_tick(current: str | None, signal: int | None) -> tuple[Any, ...]:
        wf, keep, shown, tick = poll(parts, current)
        if wf is None or wf["status"] != "completed":
            return keep, shown, tick, gr.update(), gr.update()
        return keep, shown, tick, finished_card(parts, wf), bump(signal)

    refresh_on(parts, adapter_menu(parts), [pick], [pick])
    pick.input(on_pick, [pick], [card])
    start.click(on_start, [pick, mode], [wf_id, view, timer, card], api_name="validate_adapter")
    timer.tick(
        on_tick,
        [wf_id, parts.changed],
        [wf_id, view, timer, card, parts.changed],
        show_progress="hidden",
    )


def export_section(parts: TabParts) -> None:
    """Export a registered adapter as a merged model, a llama.cpp GGUF, or into Ollama."""
    t = parts.ctx.t
    gr.Markdown(f"### {t('export_title')}")
    with gr.Row():
        pick = gr.Dropdown(label=t("adapter"), elem_id="models-export-adapter", scale=3)
        fmt = gr.Dropdown(
            list(workflows.EXPORT_FORMATS),
            value="merged",
            label=t("format"),
            elem_id="models-export-format",
        )
        start = gr.Button(t("start_export"), variant="primary", elem_id="models-export-start")
    view = gr.HTML(elem_id="models-export-progress")
    result = gr.Markdown(elem_id="models-export-result")
    wf_id, timer = gr.State(None), gr.Timer(POLL_SECONDS, active=False)

    @parts.ctx.in_status(result, "start_export")
    def on_start(ref: str | None, kind: str) -> tuple[Any, ...]:
        if not ref:
            raise gr.Error(t("pick_adapter"))
        return (*started(parts, "export", {"adapter": ref, "format": kind or "merged"}), "")

    @action
    def on_tick(current: str | None) -> tuple[Any, ...]:
        wf, keep, shown, tick = poll(parts, current)
        if wf is None or wf["status"] != "completed":
            return keep, shown, tick, gr.update()
        detail = wf["steps"][-1].get("detail") or {}
        lines = [f"**{t('output_folder')}**: `{detail.get('output_dir', '')}`"]
        lines += [f"- {key}: `{detail[key]}`" for key in ("gguf", "modelfile") if key in detail]
        if detail.get("ollama"):
            lines.append(f"- Ollama: `{detail['ollama'].get('model', '')}`")
        return keep, shown, tick, "\n".join(lines)

    refresh_on(parts, adapter_menu(parts), [pick], [pick])
    start.click(on_start, [pick, fmt], [wf_id, view, timer, result], api_name="export_adapter")
    timer.tick(on_tick, [wf_id], [wf_id, view, timer, result], show_progress="hidden")

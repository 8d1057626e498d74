"""The Memory tab: story projects, memory entries (add, edit, supersede, delete), suggestions."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr

from loraflow.memory.entries import DEFAULT_IMPORTANCE, IMPORTANCE_RANGE, KINDS
from loraflow.safe_json import loads as bounded_loads
from loraflow.services.runtime import Runtime
from loraflow.services.write import memory
from loraflow.ui.context import UIContext, action, cell, optional_whole, project_choices

# Commas (also Chinese ones) and line breaks separate keywords, except inside a /regex/.
_SEPARATOR = re.compile(r"[,，、\n]")


def parse_keywords(text: str | None) -> list[str]:
    """Keywords from one text field: 'a, b' or one per line; '/a,b/' stays one regex."""
    words: list[str] = []
    regex: str | None = None
    for piece in _SEPARATOR.split(text or ""):
        if regex is not None:
            regex += "," + piece
            if piece.rstrip().endswith("/"):
                words.append(regex.strip())
                regex = None
            continue
        word = piece.strip()
        if word.startswith("/") and not (len(word) > 1 and word.endswith("/")):
            regex = word
        elif word:
            words.append(word)
    if regex is not None:
        words.append(regex.strip())
    return words


def _entry_rows(entries: list[dict[str, Any]]) -> list[list[Any]]:
    return [
        [
            e["kind"],
            e["title"],
            cell(e["content"], 80),
            ", ".join(e["keywords"]),
            e["importance"],
            "✓" if e["always_on"] else "",
            e["chapter"] if e["chapter"] is not None else "",
            e["version"],
            e["entry_id"][:8],  # enough to tell entries apart; the picker below holds the id
        ]
        for e in entries
    ]


def _suggestion_rows(items: list[dict[str, Any]]) -> list[list[Any]]:
    return [
        [s["kind"], s["title"], cell(s["content"], 80), cell(s["evidence"], 80), s["id"]]
        for s in items
    ]


def build(ctx: UIContext, demo: gr.Blocks, tab: gr.Tab) -> None:
    """Lay out the Memory tab and wire its events (call inside a gr.Tab)."""
    t = ctx.t
    with gr.Row():
        project = gr.Dropdown(label=t("project"), elem_id="memory-project", scale=3)
        new_name = gr.Textbox(label=t("new_project"), elem_id="memory-new-project", scale=2)
        create = gr.Button(t("create_project"), elem_id="memory-create-project", scale=1)
    status = gr.Markdown(elem_id="memory-status")
    entries = gr.Dataframe(
        headers=[
            t("kind"),
            t("title"),
            t("content"),
            t("keywords"),
            t("importance"),
            t("always_on"),
            t("chapter"),
            t("version"),
            "id",
        ],
        interactive=False,
        wrap=True,
        # Fixed shares keep all nine columns in view at 1400 px, each header on one line.
        column_widths=["9%", "11%", "32%", "14%", "10%", "8%", "6%", "5%", "5%"],
        elem_id="memory-entries",
    )
    with gr.Group():
        pick = gr.Dropdown(label=t("entry"), elem_id="memory-entry")
        with gr.Row():
            kind = gr.Dropdown(
                [(t(f"kind_{k}"), k) for k in KINDS],
                value="character",
                label=t("kind"),
                elem_id="memory-kind",
            )
            title = gr.Textbox(label=t("title"), elem_id="memory-title")
            keywords = gr.Textbox(
                label=t("keywords"), placeholder=t("keywords_hint"), elem_id="memory-keywords"
            )
        content = gr.Textbox(label=t("content"), lines=3, elem_id="memory-content")
        with gr.Row():
            lo, hi = IMPORTANCE_RANGE
            importance = gr.Slider(lo, hi, value=DEFAULT_IMPORTANCE, step=1, label=t("importance"))
            always_on = gr.Checkbox(label=t("always_on"), elem_id="memory-always-on")
            chapter = gr.Textbox(label=t("chapter"), placeholder=t("optional"))
            position = gr.Textbox(label=t("position"), placeholder=t("optional"))
        note = gr.Textbox(label=t("supersede_note"), placeholder=t("supersede_hint"))
        with gr.Row():
            add = gr.Button(t("add_entry"), variant="primary", elem_id="memory-add")
            save = gr.Button(t("save_entry"), elem_id="memory-save")
            supersede = gr.Button(t("supersede"), elem_id="memory-supersede")
            delete = gr.Button(t("delete"), variant="stop", elem_id="memory-delete")
        history = gr.Markdown(elem_id="memory-history")
    with gr.Accordion(t("suggestions"), open=True):
        suggestions = gr.Dataframe(
            headers=[t("kind"), t("title"), t("content"), t("evidence"), "id"],
            interactive=False,
            wrap=True,
            elem_id="memory-suggestions",
        )
        with gr.Row():
            sug_pick = gr.Dropdown(label=t("suggestion"), scale=3)
            accept = gr.Button(t("accept"), variant="primary", scale=1)
            reject = gr.Button(t("reject"), scale=1)
    with gr.Accordion(t("export_import"), open=False):
        with gr.Row():
            export = gr.Button(t("export"), elem_id="memory-export")
            exported = gr.File(label=t("export_file"), interactive=False)
        with gr.Row():
            import_file = gr.File(label=t("import_file"), file_types=[".json"], type="filepath")
            import_go = gr.Button(t("import"))

    fields = [kind, title, content, keywords, importance, always_on, chapter, position]

    def _values(*values: Any) -> dict[str, Any]:
        k, ti, co, kw, imp, on, ch, pos = values
        return {
            "kind": k,
            "title": ti or "",
            "content": co or "",
            "keywords": parse_keywords(kw),
            "importance": int(imp),
            "always_on": bool(on),
            "chapter": optional_whole(ch, t("chapter")),
            "position": optional_whole(pos, t("position")),
        }

    def _view(rt: Runtime, ref: str | None, keep: str | None = None) -> tuple[Any, ...]:
        """Entries table, entry choices, suggestions table and choices of one project."""
        if not ref:
            empty = gr.update(choices=[], value=None)
            return [], empty, [], empty
        items = memory.list_entries(rt, ref)
        pending = memory.list_suggestions(rt, ref, "pending")
        choices = [(f"{e['title']} ({e['kind']})", e["entry_id"]) for e in items]
        ids = {e["entry_id"] for e in items}
        sug_choices = [(f"{s['title']} ({s['kind']})", s["id"]) for s in pending]
        return (
            _entry_rows(items),
            gr.update(choices=choices, value=keep if keep in ids else None),
            _suggestion_rows(pending),
            gr.update(choices=sug_choices, value=None),
        )

    view_outputs = [entries, pick, suggestions, sug_pick]

    @action
    def refresh(ref: str | None) -> tuple[Any, ...]:
        rt = ctx.rt()
        projects = project_choices(rt)
        ids = [pid for _, pid in projects]
        ref = ref if ref in ids else (ids[0] if ids else None)
        return (gr.update(choices=projects, value=ref), *_view(rt, ref))

    @action
    def on_project(ref: str | None) -> tuple[Any, ...]:
        return _view(ctx.rt(), ref)

    @ctx.in_status(status, "create_project")
    def on_create(name: str) -> tuple[Any, ...]:
        rt = ctx.rt()
        p = memory.create_project(rt, name or "")
        message = f"{t('created')}: {p['name']}"
        return (gr.update(choices=project_choices(rt), value=p["id"]), "", message)

    def _need(ref: str | None) -> str:
        if not ref:
            raise gr.Error(t("pick_project"))
        return ref

    def _need_entry(entry_id: str | None) -> str:
        if not entry_id:
            raise gr.Error(t("pick_entry"))
        return entry_id

    def _history(rt: Runtime, ref: str, entry_id: str) -> str:
        e = memory.get_entry(rt, ref, entry_id)
        lines = [f"**{t('history')}**"]
        for h in e["history"]:
            mark = f" — {h['note']}" if h.get("note") else ""
            when = h["updated_at"][:19]
            lines.append(f"- v{h['version']} ({when}): {cell(h['content'], 100)}{mark}")
        return "\n".join(lines)

    @action
    def on_pick(ref: str | None, entry_id: str | None) -> tuple[Any, ...]:
        if not ref or not entry_id:
            return (*(gr.update() for _ in fields), "")
        rt = ctx.rt()
        e = memory.get_entry(rt, ref, entry_id)
        return (
            e["kind"],
            e["title"],
            e["content"],
            ", ".join(e["keywords"]),
            e["importance"],
            e["always_on"],
            "" if e["chapter"] is None else str(e["chapter"]),
            "" if e["position"] is None else str(e["position"]),
            _history(rt, ref, entry_id),
        )

    @ctx.in_status(status, "add_entry")
    def on_add(ref: str | None, *values: Any) -> tuple[Any, ...]:
        rt = ctx.rt()
        e = memory.add_entry(rt, _need(ref), _values(*values))
        return (f"{t('added')}: {e['title']}", *_view(rt, ref, e["entry_id"]))

    @ctx.in_status(status, "save_entry")
    def on_save(ref: str | None, entry_id: str | None, *values: Any) -> tuple[Any, ...]:
        rt = ctx.rt()
        project = _need(ref)
        e = memory.update_entry(rt, project, _need_entry(entry_id), _values(*values))
        message = f"{t('saved')}: {e['title']}"
        return (message, *_view(rt, project, e["entry_id"]), _history(rt, project, e["entry_id"]))

    @ctx.in_status(status, "supersede")
    def on_supersede(
        ref: str | None, entry_id: str | None, why: str, *values: Any
    ) -> tuple[Any, ...]:
        rt = ctx.rt()
        project = _need(ref)
        e = memory.supersede_entry(rt, project, _need_entry(entry_id), _values(*values), why)
        message = f"{t('superseded')}: {e['title']} (v{e['version']})"
        history = _history(rt, project, e["entry_id"])
        return (message, *_view(rt, project, e["entry_id"]), history, "")

    @ctx.in_status(status, "delete")
    def on_delete(ref: str | None, entry_id: str | None) -> tuple[Any, ...]:
        rt = ctx.rt()
        e = memory.delete_entry(rt, _need(ref), _need_entry(entry_id))
        return (f"{t('deleted')}: {e['title']}", *_view(rt, ref))

    @ctx.in_status(status, "accept")
    def on_accept(ref: str | None, sid: str | None) -> tuple[Any, ...]:
        rt = ctx.rt()
        if not sid:
            raise gr.Error(t("pick_suggestion"))
        done = memory.accept_suggestion(rt, _need(ref), sid)
        return (f"{t('accepted')}: {done['entry']['title']}", *_view(rt, ref))

    @ctx.in_status(status, "reject")
    def on_reject(ref: str | None, sid: str | None) -> tuple[Any, ...]:
        rt = ctx.rt()
        if not sid:
            raise gr.Error(t("pick_suggestion"))
        done = memory.reject_suggestion(rt, _need(ref), sid)
        return (f"{t('rejected')}: {done['title']}", *_view(rt, ref))

    @ctx.in_status(status, "export")
    def on_export(ref: str | None) -> tuple[str, str]:
        doc = memory.export_project(ctx.rt(), _need(ref))
        # Gradio serves the download from its own temporary folder.
        folder = Path(tempfile.mkdtemp(prefix="loraflow-export-"))
        name = re.sub(r"[^\w.-]+", "_", str(doc.get("project", {}).get("name", "memory")))
        path = folder / f"{name or 'memory'}.json"
        path.write_text(json.dumps(doc, ensure_ascii=False, indent=2), "utf-8")
        return str(path), ""

    @ctx.in_status(status, "import")
    def on_import(path: str | None) -> tuple[Any, ...]:
        rt = ctx.rt()
        if not path:
            raise gr.Error(t("no_file_chosen"))
        try:
            doc = bounded_loads(Path(path).read_bytes(), where=Path(path).name)
        except (OSError, ValueError) as exc:
            raise gr.Error(f"{Path(path).name}: {t('not_json')} ({exc})") from exc
        p = memory.import_project(rt, doc)
        message = f"{t('imported')}: {p['name']} ({p['entries']})"
        return (gr.update(choices=project_choices(rt), value=p["id"]), message, None)

    demo.load(refresh, project, [project, *view_outputs], show_progress="hidden")
    tab.select(refresh, project, [project, *view_outputs], show_progress="hidden")
    project.change(on_project, project, view_outputs, show_progress="hidden")
    create.click(on_create, new_name, [project, new_name, status], api_name="memory_create_project")
    pick.change(on_pick, [project, pick], [*fields, history], show_progress="hidden")
    add.click(on_add, [project, *fields], [status, *view_outputs], api_name="memory_add")
    save.click(on_save, [project, pick, *fields], [status, *view_outputs, history])
    supersede.click(
        on_supersede, [project, pick, note, *fields], [status, *view_outputs, history, note]
    )
    delete.click(on_delete, [project, pick], [status, *view_outputs])
    accept.click(on_accept, [project, sug_pick], [status, *view_outputs])
    reject.click(on_reject, [project, sug_pick], [status, *view_outputs])
    export.click(on_export, project, [exported, status])
    import_go.click(on_import, import_file, [project, status, import_file])

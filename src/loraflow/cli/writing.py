"""Writing-studio commands: `memory ...` (projects, entries, export/import) and `write`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from loraflow.cli.common import (
    DataDir,
    app,
    console,
    print_json,
    runtime_for,
)
from loraflow.safe_json import loads as bounded_loads

memory_app = typer.Typer(help="Story memory: projects, entries, export and import.")
app.add_typer(memory_app, name="memory")


@memory_app.command("projects")
def projects(data_dir: DataDir = None) -> None:
    """List story projects with their entry counts."""
    from loraflow.services.write import memory

    items = memory.list_projects(runtime_for(data_dir))
    table = Table()
    for col in ("id", "name", "entries", "passages", "pending suggestions"):
        table.add_column(col)
    for p in items:
        row = (p["entries"], p["passages"], p["pending_suggestions"])
        table.add_row(p["id"], p["name"], *map(str, row))
    console.print(table)


@memory_app.command("create")
def create(name: str, description: str = "", data_dir: DataDir = None) -> None:
    """Create a story project."""
    from loraflow.services.write import memory

    p = memory.create_project(runtime_for(data_dir), name, description)
    console.print(f"created {p['name']} ({p['id']})")


@memory_app.command("add")
def add(
    project: str,
    kind: Annotated[str, typer.Option(help="character, plot_event, world, dialogue, note")],
    title: Annotated[str, typer.Option()],
    content: Annotated[str, typer.Option()],
    keyword: Annotated[list[str] | None, typer.Option(help="Trigger word (repeatable).")] = None,
    importance: int = 5,
    always_on: bool = False,
    chapter: int | None = None,
    data_dir: DataDir = None,
) -> None:
    """Add a memory entry to a project (by id or name)."""
    from loraflow.services.write import memory

    fields = {
        "kind": kind,
        "title": title,
        "content": content,
        "keywords": keyword or [],
        "importance": importance,
        "always_on": always_on,
        "chapter": chapter,
    }
    e = memory.add_entry(runtime_for(data_dir), project, fields)
    console.print(f"added {e['kind']} {e['title']!r} ({e['entry_id']})")


@memory_app.command("list")
def list_entries(project: str, data_dir: DataDir = None) -> None:
    """List a project's current entries."""
    from loraflow.services.write import memory

    items = memory.list_entries(runtime_for(data_dir), project)
    table = Table()
    for col in ("entry", "kind", "title", "importance", "always on", "v", "keywords"):
        table.add_column(col)
    for e in items:
        flags = (str(e["importance"]), "yes" if e["always_on"] else "", str(e["version"]))
        table.add_row(e["entry_id"], e["kind"], e["title"], *flags, ", ".join(e["keywords"]))
    console.print(table)


@memory_app.command("export")
def export(
    project: str,
    out: Annotated[Path | None, typer.Option(help="Write to this file; default stdout.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Export a project's memory as JSON."""
    from loraflow.services.write import memory

    doc = memory.export_project(runtime_for(data_dir), project)
    text = json.dumps(doc, ensure_ascii=False, indent=2)
    if out is None:
        console.print(text, markup=False, highlight=False)
    else:
        out.write_text(text, encoding="utf-8")
        console.print(f"wrote {len(doc['entries'])} entries to {out}")


@memory_app.command("import")
def import_(
    file: Path,
    name: Annotated[
        str | None, typer.Option(help="Project name; default the exported one.")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Create a project from an exported JSON file."""
    from loraflow.errors import InvalidInput
    from loraflow.services.write import memory

    try:
        doc = bounded_loads(file.read_bytes(), where=str(file))
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read {str(file)!r} as JSON: {exc}") from exc
    p = memory.import_project(runtime_for(data_dir), doc, name)
    console.print(f"imported {p['entries']} entries into {p['name']} ({p['id']})")


@app.command()
def write(
    prompt: Annotated[str, typer.Argument(help="Text to continue.")] = "",
    project: Annotated[str | None, typer.Option(help="Story project for memory.")] = None,
    cont: Annotated[bool, typer.Option("--continue", help="Continue the stored story.")] = False,
    adapter: Annotated[str | None, typer.Option(help="A loaded LoRA adapter.")] = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    no_memory: Annotated[bool, typer.Option("--no-memory", help="Do not inject memory.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole result.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Generate story text with the local model, memory injected."""
    from loraflow.services.write.writing import WriteRequest
    from loraflow.services.write.writing import write as run_write

    req = WriteRequest(
        prompt=prompt,
        mode="continue" if cont else "prompt",
        project=project,
        use_memory=not no_memory,
        engine="local",
        adapter=adapter,
        max_tokens=max_tokens,
        temperature=temperature,
    )
    out = run_write(runtime_for(data_dir, load_local=True), req)
    if as_json:
        print_json(out)
        return
    console.print(out["text"], markup=False, highlight=False)
    if out["memory"]:
        used = ", ".join(u["title"] for u in out["memory"]["used"]) or "none"
        dropped = ", ".join(d["title"] for d in out["memory"]["dropped"]) or "none"
        console.print(f"[dim]memory used: {used}; dropped for budget: {dropped}[/dim]")

"""Knowledge-base commands: ingest, documents list/delete, ask."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from loraflow.cli.common import DataDir, app, console, err, make_settings, parse_bool

Collection = Annotated[
    str | None, typer.Option("--collection", help="Knowledge base (default: default).")
]
docs_app = typer.Typer(help="List and delete knowledge-base documents.", no_args_is_help=True)
app.add_typer(docs_app, name="documents")


@app.command()
def ingest(
    paths: Annotated[
        list[Path], typer.Argument(help="Files or folders (.txt .md .pdf .json .jsonl).")
    ],
    collection: Collection = None,
    data_dir: DataDir = None,
) -> None:
    """Add documents to the knowledge base (re-ingesting a changed file replaces it)."""
    from rich.progress import Progress

    from loraflow.services.know.knowledge import ingest as ingest_docs
    from loraflow.services.runtime import build_runtime

    rt = build_runtime(make_settings(data_dir=data_dir), load_local=False)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("ingesting", total=None)

        def progress(name: str, done: int, total: int) -> None:
            bar.update(task, description=f"ingesting {name}", completed=done, total=total)

        report = ingest_docs(rt, collection, paths, progress=progress)
    for d in report.added:
        console.print(f"[green]added[/green]     {d.source} ({d.n_chunks} chunks, id {d.doc_id})")
    for s in report.replaced:
        console.print(f"[cyan]replaced[/cyan]  {s}")
    for s in report.unchanged:
        console.print(f"unchanged {s}")
    for s, why in report.failed:
        err.print(f"[red]failed[/red]    {s}: {why}")
    if report.failed and not (report.added or report.replaced or report.unchanged):
        raise typer.Exit(1)


@docs_app.command("list")
def documents_list(collection: Collection = None, data_dir: DataDir = None) -> None:
    """List ingested documents."""
    from loraflow.services.know.knowledge import list_documents
    from loraflow.services.runtime import build_runtime

    rt = build_runtime(make_settings(data_dir=data_dir), load_local=False)
    docs = list_documents(rt, collection)
    table = Table()
    for col in ("doc_id", "source", "chunks", "chars", "added_at"):
        table.add_column(col)
    for d in docs:
        table.add_row(d["doc_id"], d["source"], str(d["n_chunks"]), str(d["chars"]), d["added_at"])
    console.print(table)


@docs_app.command("delete")
def documents_delete(doc_id: str, collection: Collection = None, data_dir: DataDir = None) -> None:
    """Delete one document and its chunks."""
    from loraflow.services.know.knowledge import delete_document
    from loraflow.services.runtime import build_runtime

    rt = build_runtime(make_settings(data_dir=data_dir), load_local=False)
    info = delete_document(rt, collection, doc_id)
    console.print(f"deleted {info['source']} ({info['doc_id']})")


@app.command()
def ask(
    query: Annotated[str, typer.Argument(help="The question.")],
    use_lora: Annotated[str | None, typer.Option("--use-lora", help="true|false")] = None,
    adapter: Annotated[str | None, typer.Option(help="Answer with this adapter.")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Answer length limit.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full JSON result.")] = False,
    collection: Collection = None,
    assistant: Annotated[str | None, typer.Option(help="Answer as this assistant.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Answer one question in-process (no server), with sources."""
    from dataclasses import asdict

    from loraflow.services.catalog.selection import initialise_selection
    from loraflow.services.know.ask import AskRequest
    from loraflow.services.know.ask import ask as ask_service
    from loraflow.services.know.documents import ingest_sample_if_empty
    from loraflow.services.runtime import build_runtime

    flag = parse_bool(use_lora, "--use-lora")
    settings = make_settings(data_dir=data_dir)
    rt = build_runtime(settings, load_local=flag is not False)
    initialise_selection(rt, flag)
    ingest_sample_if_empty(rt)
    result = ask_service(
        rt,
        AskRequest(
            query=query,
            use_lora=flag,
            adapter=adapter,
            max_new_tokens=max_new_tokens,
            collection=collection,
            assistant=assistant,
        ),
    )
    if as_json:
        console.print_json(json.dumps(asdict(result), ensure_ascii=False))
        return
    console.print(result.answer)
    console.print(f"\n[dim]model: {result.model_used}  time: {result.processing_time}s[/dim]")
    for s in result.source_documents:
        console.print(f"[dim][{s['index']}] {s['source']} #{s['chunk']} (score {s['score']})[/dim]")

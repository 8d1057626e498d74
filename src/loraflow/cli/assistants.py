"""`loraflow assistant ...`: list, create, show, update and delete assistants."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

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

assistant_app = typer.Typer(
    help="Assistants: prompt + model or adapter + knowledge bases.", no_args_is_help=True
)
app.add_typer(assistant_app, name="assistant")

SystemPrompt = Annotated[str | None, typer.Option(help="The assistant's instructions.")]
Engine = Annotated[
    str | None,
    typer.Option(help="local, or remote (ollama / openai: the REMOTE_BACKEND server)."),
]
Adapter = Annotated[
    str | None,
    typer.Option(
        help="Engine local: a LoRA adapter. Engine openai: one of the server's models or "
        "LoRA modules (vLLM)."
    ),
]
Collections = Annotated[
    list[str] | None, typer.Option("--collection", help="Knowledge base (repeatable).")
]
Description = Annotated[str | None, typer.Option(help="What it is for.")]
MaxNewTokens = Annotated[int | None, typer.Option(help="Default answer length.")]
Temperature = Annotated[float | None, typer.Option(help="Default temperature.")]
TopK = Annotated[int | None, typer.Option(help="Chunks retrieved per question.")]


def _generation(max_new_tokens: int | None, temperature: float | None) -> dict[str, Any]:
    given = {"max_new_tokens": max_new_tokens, "temperature": temperature}
    return {k: v for k, v in given.items() if v is not None}


@assistant_app.command("list")
def assistant_list(data_dir: DataDir = None, as_json: AsJson = False) -> None:
    """List assistants."""
    from loraflow.services.catalog.assistants import list_assistants

    items = [asdict(a) for a in list_assistants(runtime_for(data_dir))]
    if as_json:
        print_json(items)
        return
    table = Table()
    for col in ("name", "engine", "adapter", "collections", "description"):
        table.add_column(col)
    for a in items:
        cols = ", ".join(a["collections"]) or "(none)"
        table.add_row(a["name"], a["engine"], a["adapter"] or "-", cols, a["description"])
    console.print(table)


@assistant_app.command("create")
def assistant_create(
    name: str,
    system_prompt: SystemPrompt = "",
    engine: Engine = "local",
    adapter: Adapter = None,
    collection: Collections = None,
    description: Description = "",
    max_new_tokens: MaxNewTokens = None,
    temperature: Temperature = None,
    top_k: TopK = None,
    data_dir: DataDir = None,
) -> None:
    """Create an assistant."""
    from loraflow.services.catalog.assistants import create_assistant

    spec = {
        "name": name,
        "system_prompt": system_prompt or "",
        "engine": engine or "local",
        "adapter": adapter,
        "collections": list(collection or []),
        "description": description or "",
        "generation": _generation(max_new_tokens, temperature),
        "retrieval": {"top_k": top_k} if top_k else {},
    }
    a = create_assistant(runtime_for(data_dir), spec)
    console.print(f"created assistant {a.name}")


@assistant_app.command("update")
def assistant_update(
    name: str,
    rename: Annotated[str | None, typer.Option("--rename", help="A new name.")] = None,
    system_prompt: SystemPrompt = None,
    engine: Engine = None,
    adapter: Adapter = None,
    no_adapter: Annotated[bool, typer.Option("--no-adapter", help="Drop the adapter.")] = False,
    collection: Collections = None,
    no_collections: Annotated[
        bool, typer.Option("--no-collections", help="Answer without retrieval.")
    ] = False,
    description: Description = None,
    max_new_tokens: MaxNewTokens = None,
    temperature: Temperature = None,
    top_k: TopK = None,
    data_dir: DataDir = None,
) -> None:
    """Change some of an assistant's fields; the others stay as they are."""
    from loraflow.errors import InvalidInput
    from loraflow.services.catalog.assistants import get_assistant, update_assistant

    if (adapter and no_adapter) or (collection and no_collections):
        raise InvalidInput("--adapter/--no-adapter and --collection/--no-collections clash")
    rt = runtime_for(data_dir)
    current = get_assistant(rt, name)
    changes: dict[str, Any] = {
        "name": rename,
        "system_prompt": system_prompt,
        "engine": engine,
        "adapter": adapter,
        "description": description,
        "collections": list(collection) if collection else None,
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    if no_adapter:
        changes["adapter"] = None
    if no_collections:
        changes["collections"] = []
    if gen := _generation(max_new_tokens, temperature):
        changes["generation"] = {**current.generation, **gen}
    if top_k:
        kept = {k: v for k, v in current.retrieval.items() if k != "notices"}
        changes["retrieval"] = {**kept, "top_k": top_k}
    if not changes:
        raise InvalidInput("nothing to change", hint="see `loraflow assistant update --help`")
    a = update_assistant(rt, name, changes)
    console.print(f"updated assistant {a.name}")


@assistant_app.command("show")
def assistant_show(name: str, data_dir: DataDir = None) -> None:
    """Print one assistant as JSON."""
    from loraflow.services.catalog.assistants import get_assistant

    print_json(asdict(get_assistant(runtime_for(data_dir), name)))


@assistant_app.command("delete")
def assistant_delete(name: str, data_dir: DataDir = None) -> None:
    """Delete an assistant."""
    from loraflow.services.catalog.assistants import delete_assistant

    delete_assistant(runtime_for(data_dir), name)
    console.print(f"deleted assistant {name}")

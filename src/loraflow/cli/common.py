"""Shared pieces of the CLI: the Typer app, consoles, option types, error rendering."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from typer.core import TyperGroup

from loraflow.config import Settings
from loraflow.errors import ConfigError, LoraflowError

if TYPE_CHECKING:
    from loraflow.services.runtime import Runtime


class _Commands(TyperGroup):
    """The root command: a LoraflowError from any command is printed here, once, with its
    exit code; commands just raise."""

    def invoke(self, ctx: Any) -> Any:  # typer's click Context
        try:
            return super().invoke(ctx)
        except LoraflowError as exc:
            fail(exc)


app = typer.Typer(
    name="loraflow",
    cls=_Commands,
    help="loraflow: LoRA adapters from raw data to production; RAG answers, switchable models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

console = Console()
err = Console(stderr=True)

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Root of all state (overrides LORAFLOW_DATA_DIR)."),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def print_json(value: Any) -> None:
    console.print_json(json.dumps(value, ensure_ascii=False, default=str))


def runtime_for(data_dir: Path | None, load_local: bool = False) -> Runtime:
    """The services' runtime for a command (the local model loaded only when asked)."""
    from loraflow.services.runtime import build_runtime

    return build_runtime(make_settings(data_dir=data_dir), load_local=load_local)


def parse_bool(value: str | None, flag: str) -> bool | None:
    if value is None:
        return None
    v = value.strip().lower()
    if v in {"true", "1", "yes", "on"}:
        return True
    if v in {"false", "0", "no", "off"}:
        return False
    raise typer.BadParameter(f"{value!r} is not true or false", param_hint=flag)


_built: list[Settings] = []


def make_settings(**overrides: Any) -> Settings:
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        s = Settings(**given)
        s.check()
    except LoraflowError:
        raise
    except ValueError as exc:  # pydantic's ValidationError
        raise ConfigError(f"invalid configuration: {exc}") from exc
    _built[:] = [s]
    return s


def command_settings() -> Settings:
    """The settings the running command built (its --data-dir included), else the defaults."""
    return _built[0] if _built else make_settings()


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )


def print_error(exc: LoraflowError) -> None:
    """The one rendering of a user's error: its message, then its hint, on stderr."""
    err.print(f"[red]error:[/red] {exc.message}")
    if exc.hint:
        err.print(f"[yellow]hint:[/yellow] {exc.hint}")


def fail(exc: LoraflowError) -> NoReturn:
    print_error(exc)
    raise typer.Exit(exc.exit_code)

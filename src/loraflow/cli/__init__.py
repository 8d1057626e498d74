"""The `loraflow` command line: thin commands over the service functions, one module per area."""

from __future__ import annotations

import sys

from loraflow import __version__

# Each module registers its commands on `app` when imported; one line per area.
from loraflow.cli import (
    adapters,  # noqa: F401
    knowledge,  # noqa: F401
    knowledge_bases,  # noqa: F401
    ops,  # noqa: F401
    service,  # noqa: F401
    training,  # noqa: F401
    writing,  # noqa: F401
)
from loraflow.cli.common import app, console, err
from loraflow.errors import LoraflowError

__all__ = ["app", "main"]


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

"""The `loraflow` command line: thin commands over the service functions, one module per area."""

from __future__ import annotations

import sys

from loraflow import __version__

# Each module registers its commands on `app` when imported; one line per area.
from loraflow.cli import (
    adapter_benchmark,  # noqa: F401
    adapters,  # noqa: F401
    alerts,  # noqa: F401
    assistants,  # noqa: F401
    db,  # noqa: F401
    deploy,  # noqa: F401
    integrate,  # noqa: F401
    knowledge,  # noqa: F401
    knowledge_bases,  # noqa: F401
    ops,  # noqa: F401
    service,  # noqa: F401
    training,  # noqa: F401
    writing,  # noqa: F401
)
from loraflow.cli.common import app, command_settings, console, print_error
from loraflow.errors import DiskFull, EngineUnavailable, LoraflowError, is_disk_full

__all__ = ["app", "main"]


@app.command()
def version() -> None:
    """Print the version."""
    console.print(__version__)


def main() -> None:
    """Entry point of the `loraflow` script."""
    try:
        app()
    except Exception as exc:
        # The commands' own errors are printed by the app (common.fail); what reaches here is
        # one raised outside a command, or a database outage or full disk met on the way.
        known = exc if isinstance(exc, LoraflowError) else _operational(exc)
        if known is None:
            raise
        print_error(known)
        sys.exit(known.exit_code)


_FREE_SPACE = "free space in the data dir (LORAFLOW_DATA_DIR) and run the command again"


def _operational(exc: Exception) -> LoraflowError | None:
    """A database outage or a full disk as a plain error (not a traceback); None otherwise."""
    if is_disk_full(exc):
        return DiskFull(
            f"the disk is full: {exc}; nothing more was written",
            hint=_FREE_SPACE,
        )
    from sqlalchemy.exc import DBAPIError

    if not isinstance(exc, DBAPIError):
        return None
    from loraflow.db import disk_full, unavailable_reason

    try:
        s = command_settings()
        url, timeout = s.db_url, s.db_busy_timeout
    except Exception:  # the settings themselves are broken: say what the database said
        url, timeout = "(DATABASE_URL)", 30.0
    found = unavailable_reason(exc, url, timeout)
    if found is not None:
        return EngineUnavailable(found[0], hint=found[1])
    if disk_full(exc):
        return DiskFull(
            "the database could not write: the disk is full",
            hint=_FREE_SPACE,
        )
    return None

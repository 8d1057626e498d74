"""What service functions need from the process, as protocols: read these before `runtime`.

`Runtime` satisfies every protocol here; the CLI's light context (settings and a database,
no models loaded) satisfies `Context`, so functions that only read records take that.
"""

from __future__ import annotations

from typing import Protocol

from sqlalchemy import Engine

from loraflow.config import Settings


class Context(Protocol):
    """Settings and the database: enough for registry, jobs and records."""

    settings: Settings
    db: Engine


class RequestMonitor(Protocol):
    """Counts served requests per deployment variant for the alert rules (ops.alerts.Monitor)."""

    def record(self, target: str, variant: str, ok: bool, seconds: float) -> None: ...

    def stop(self) -> None: ...

"""Start and stop a real loraflow server on 127.0.0.1 for tests.

`Server`, `free_port` and `cli_argv` are bench/_server.py's, which the bench scripts use too.
"""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
# bench/ is a folder of scripts that import each other by name, not a package.
if str(BENCH) not in sys.path:
    sys.path.append(str(BENCH))

from _server import Server, cli_argv, free_port  # noqa: E402

__all__ = ["BENCH", "Server", "cli_argv", "free_port", "uvicorn_argv"]


def uvicorn_argv(port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "loraflow.api.app:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
